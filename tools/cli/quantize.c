/* bdh quantize IN OUT: a pre-quantized copy of a model file
 * (bdh_model_quantize; docs/cli.md, docs/format.md). */
#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

static void quantize_help(FILE *out)
{
    fputs("Usage: bdh quantize [--type q8_0] IN OUT\n"
          "\n"
          "Write a quantized copy of the model file IN to OUT: the same tensors and\n"
          "metadata, with encoder, encoder_v and decoder as int8 blocks of 32 values\n"
          "along n_embd, each with a float16 scale (docs/format.md). embed.weight and\n"
          "lm_head are copied as they are. Run the copy with '--weights stored' (or\n"
          "q8_0): it gives exactly the logits of IN run with '--weights q8_0'.\n"
          "OUT is written beside itself and renamed into place, so a failure leaves\n"
          "an existing OUT as it was. IN may be F32, F16 or BF16; OUT must not be IN.\n"
          "\n"
          "      --type TYPE  the quantization; q8_0 (the default) is the one there is\n"
          "  -h, --help       this help\n",
          out);
}

static const char *const U = "quantize ";

int cmd_quantize(int argc, char **argv)
{
    enum { OPT_TYPE = OPT_COMMAND };
    static const struct option longopts[] = {
        {"type", required_argument, NULL, OPT_TYPE}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (c == 'h') {
            quantize_help(stdout);
            return 0;
        }
        if (c != OPT_TYPE) return bad_option(U, c, argv);
        if (strcmp(optarg, "q8_0") != 0) return usage_fail(U, "--type needs q8_0 (the one quantization written), not '%s'", optarg);
    }
    if (argc - optind != 2) return usage_fail(U, "quantize needs two arguments, IN and OUT");
    const char *in = argv[optind], *out = argv[optind + 1];
    bdh_status st = bdh_model_quantize(in, out, BDH_WEIGHTS_Q8_0);
    if (st != BDH_OK) return lib_fail_on("cannot quantize", in, st);
    printf("wrote %s: encoder, encoder_v, decoder as Q8_0; %.2f MiB (from %.2f MiB)\n", out,
           mib(file_size(out)), mib(file_size(in)));
    return 0;
}
