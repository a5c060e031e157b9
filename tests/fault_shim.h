/* Control of the malloc shim in fault_shim.c (see there). */
#ifndef BDH_FAULT_SHIM_H
#define BDH_FAULT_SHIM_H

#include <stdbool.h>
#include <stddef.h>

#define FAULT_API __attribute__((visibility("default")))

/* Fail the n-th library allocation from now (0: the next one). */
FAULT_API void fault_arm(long n);
/* Fail none. */
FAULT_API void fault_disarm(void);
/* Blocks the library has allocated and not yet freed. */
FAULT_API long fault_live(void);
/* Allocations made so far by anyone in the process, the C library included. */
FAULT_API long fault_allocations(void);
/* Memory the shim neither counts nor fails (the tests' own copies). */
FAULT_API void *fault_raw_malloc(size_t n);
FAULT_API void fault_raw_free(void *p);

#endif
