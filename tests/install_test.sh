#!/usr/bin/env bash
# `make install` into a temporary prefix, then build a program against it with
# pkg-config only (shared and static) and run it on a golden model.
set -euo pipefail
build=${1:-build}
prefix=$(mktemp -d /tmp/bdh-install-XXXXXX)
trap 'rm -rf "$prefix"' EXIT
make -s install BUILD="$build" PREFIX="$prefix" >/dev/null
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
cat > "$prefix/prog.c" <<'C'
#include <bdh.h>
#include <stdio.h>
int main(int argc, char **argv)
{
    bdh_model *m;
    bdh_state *s;
    float logits[256];
    if (bdh_model_load(argv[1], NULL, &m) != BDH_OK || bdh_state_new(m, &s) != BDH_OK) {
        fprintf(stderr, "%s\n", bdh_last_error());
        return 1;
    }
    int rc = bdh_step(s, 'A', logits);
    bdh_state_free(s);
    bdh_model_free(m);
    return rc;
}
C
pass=0 fail=0
check() { if "$@"; then pass=$((pass + 1)); else echo "install: FAILED: $*"; fail=$((fail + 1)); fi; }
check test -f "$prefix/include/bdh.h"
check test -L "$prefix/lib/libbdh.so"
check test -f "$prefix/lib/libbdh.a"
# the version lives in include/bdh.h (the Makefile reads it from there too)
version=$(for part in MAJOR MINOR PATCH; do sed -n "s/^#define BDH_VERSION_$part \([0-9]*\)\$/\1/p" include/bdh.h; done | paste -sd.)
check test "$(pkg-config --modversion bdh)" = "$version"
check cc "$prefix/prog.c" -o "$prefix/prog_shared" $(pkg-config --cflags --libs bdh) -Wl,-rpath,"$prefix/lib"
check "$prefix/prog_shared" tests/data/golden/tiny.model.safetensors
check cc "$prefix/prog.c" -o "$prefix/prog_static" $(pkg-config --cflags bdh) "$prefix/lib/libbdh.a" $(pkg-config --static --libs-only-l bdh | sed 's/-lbdh//')
check "$prefix/prog_static" tests/data/golden/tiny.model.safetensors
check bash -c "objdump -p '$prefix/lib/libbdh.so' | grep -q 'SONAME.*libbdh.so.0'"
if [ -x "$build/bdh" ]; then # installed too: it must find the installed library
    check test -x "$prefix/bin/bdh"
    check env -u LD_LIBRARY_PATH "$prefix/bin/bdh" info tests/data/golden/tiny.model.safetensors
fi
echo "install: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
