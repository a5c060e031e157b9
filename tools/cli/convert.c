/* bdh convert IN OUT: any checkpoint the loader reads, as the canonical
 * file (bdh_model_convert; docs/cli.md, docs/format.md). */
#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

static void convert_help(FILE *out)
{
    fputs("Usage: bdh convert [--type TYPE] IN OUT\n"
          "\n"
          "Write the checkpoint IN as the canonical libbdh file OUT: the reference's\n"
          "tensor names and layouts, the whole configuration in the metadata,\n"
          "attn.freqs in float32. IN is anything 'bdh info' loads: a safetensors\n"
          "file, a directory with config.json and model.safetensors (save_pretrained),\n"
          "names under model./backbone./module./_orig_mod., bdh-transformers'\n"
          "lm_head.weight (docs/format.md lists them). OUT is written beside itself\n"
          "and renamed into place, so a failure leaves an existing OUT as it was;\n"
          "OUT must not be IN.\n"
          "\n"
          "      --type TYPE  the weights' type: " WEIGHTS_NAMES "\n"
          "                   (default stored: each tensor's own type; q8_0 is\n"
          "                   'bdh quantize'; a Q8_0 input becomes float exactly)\n"
          "  -h, --help       this help\n",
          out);
}

static const char *const U = "convert ";

int cmd_convert(int argc, char **argv)
{
    enum { OPT_TYPE = OPT_COMMAND };
    static const struct option longopts[] = {
        {"type", required_argument, NULL, OPT_TYPE}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    bdh_weight_type type = BDH_WEIGHTS_AS_STORED;
    int c;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (c == 'h') {
            convert_help(stdout);
            return 0;
        }
        if (c != OPT_TYPE) return bad_option(U, c, argv);
        if (parse_weight_type(U, "--type", optarg, &type) != 0) return EXIT_USAGE;
    }
    if (argc - optind != 2) return usage_fail(U, "convert needs two arguments, IN and OUT");
    const char *in = argv[optind], *out = argv[optind + 1];
    bdh_status st = bdh_model_convert(in, out, type);
    if (st != BDH_OK) return lib_fail_on("cannot convert", in, st);
    printf("wrote %s: %.2f MiB\n", out, mib(file_size(out)));
    return 0;
}
