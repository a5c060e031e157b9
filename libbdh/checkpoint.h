/* Checkpoint layouts (docs/format.md, "Accepted checkpoints"): where the
 * tensors of a BDH checkpoint are, what they are called, and where its
 * configuration comes from, for every project that writes one.
 *
 *   path        a safetensors file, or a directory holding model.safetensors
 *               (and config.json), as save_pretrained writes it
 *   names       any run of the prefixes model., backbone., module., _orig_mod.
 *               removed; lm_head.weight [V][D] (nn.Linear) is lm_head
 *               transposed; no lm_head: embed.weight transposed, when the
 *               config.json says tie_word_embeddings (Hugging Face's default)
 *   config      the file's metadata, a config.json beside it (our names or
 *               Hugging Face's), the load parameters' override: every value
 *               given must agree with the others and with the shapes
 *   extras      lm_gate is ignored; any other tensor is refused by name */
#ifndef BDH_CHECKPOINT_H
#define BDH_CHECKPOINT_H

#include "internal.h"

/* Open the checkpoint at path into st, point w->t at its tensors in the
 * reference's layouts and fill *c from the shapes and the configuration
 * sources (override: NULL, or fields > 0 that must hold). On failure st is
 * closed. */
BDH_INTERNAL bdh_status bdh_checkpoint_open(const char *path, const bdh_config *override, bdh_safetensors *st,
                                            bdh_weight_views *w, bdh_config *c);

#endif /* BDH_CHECKPOINT_H */
