/* bdh info MODEL: a model's configuration and sizes (docs/cli.md). */
#include "cli.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>

static void info_help(FILE *out)
{
    fputs("Usage: bdh info [--weights TYPE] [--device DEV] MODEL\n"
          "\n"
          "Print a model's configuration, parameter count, the dtype of each tensor\n"
          "in the file (Q8_0 for a file 'bdh quantize' wrote), the bytes its weights\n"
          "take in memory when held as --weights says (on the --device), the bytes\n"
          "of one stream's state, and its fingerprint; then a line about the library\n"
          "and this machine (build options, CPU kernels, BLAS, CUDA devices).\n"
          "\n"
          "      --weights TYPE  hold the weights as f32 (default), bf16, f16, q8_0,\n"
          "                      or as stored in the file (stored)\n"
          "      --device DEV    cpu (default) or cuda (a build with make CUDA=1)\n"
          "      --cuda-device N which GPU with --device cuda (default 0)\n"
          "  -h, --help          this help\n",
          out);
}

static void print_info(const char *path, const bdh_model *m, bdh_weight_type weights, const model_place *place)
{
    char where[32];
    static const char *const tensors[] = {"embed.weight", "encoder", "encoder_v", "decoder", "lm_head", "attn.freqs"};
    bdh_config c;
    bdh_model_config(m, &c);
    printf("file:         %s\n", path);
    printf("n_layer:      %d\n", (int)c.n_layer);
    printf("n_embd:       %d\n", (int)c.n_embd);
    printf("n_head:       %d\n", (int)c.n_head);
    printf("n_neurons:    %d (per head; mlp_internal_dim_multiplier %d)\n", (int)c.n_neurons,
           (int)c.mlp_internal_dim_multiplier);
    printf("vocab_size:   %d%s\n", (int)c.vocab_size, c.vocab_size == 256 ? " (bytes)" : "");
    printf("parameters:   %" PRId64 " (%.2f M)\n", bdh_model_n_params(m), (double)bdh_model_n_params(m) / 1e6);
    printf("dtypes:      ");
    for (size_t i = 0; i < sizeof tensors / sizeof *tensors; i++) {
        const char *dt = bdh_model_file_dtype(m, tensors[i]);
        printf(" %s=%s", tensors[i], dt ? dt : "absent");
    }
    printf("\nweights:      %zu bytes (%.2f MiB) in memory, held as %s\n", bdh_model_weight_bytes(m),
           mib(bdh_model_weight_bytes(m)), weights_name(weights));
    printf("device:       %s\n", place_name(place, where, sizeof where));
    printf("state:        %zu bytes (%.2f MiB) per stream\n", bdh_model_state_bytes(m), mib(bdh_model_state_bytes(m)));
    printf("fingerprint:  %016" PRIx64 "\n", bdh_model_fingerprint(m));
    printf("system:       %s\n", bdh_system_info());
}

int cmd_info(int argc, char **argv)
{
    static const struct option longopts[] = {{"weights", required_argument, NULL, OPT_WEIGHTS},
                                             PLACE_LONGOPTS,
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    model_opts o = MODEL_OPTS_DEFAULT; /* of these, info takes --weights and the place */
    o.threads = 1;                     /* it runs nothing */
    int c, rc;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (c == 'h') {
            info_help(stdout);
            return 0;
        }
        if (!parse_model_option("info ", c, optarg, &o, &rc)) return bad_option("info ", c, argv);
        if (rc) return rc;
    }
    if (argc - optind != 1) return usage_fail("info ", "info needs exactly one MODEL argument");
    if ((rc = check_place("info ", &o.place))) return rc;
    bdh_model *m;
    rc = load_model_opts(argv[optind], &o, &m);
    if (rc) return rc;
    print_info(argv[optind], m, o.weights, &o.place);
    bdh_model_free(m);
    return 0;
}
