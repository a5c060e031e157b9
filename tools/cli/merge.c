/* bdh merge A B -o OUT: one model holding the neurons of two
 * (bdh_model_merge; docs/merging.md, docs/cli.md). */
#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

static void merge_help(FILE *out)
{
    fputs("Usage: bdh merge [--embed-from mean|a|b] A B -o OUT\n"
          "\n"
          "Merge the model files A and B into OUT, a model whose every head holds\n"
          "A's neurons and then B's (the BDH paper's model merging; docs/merging.md):\n"
          "encoder, encoder_v, decoder and attn.freqs are joined per head along the\n"
          "neuron axis, embed.weight and lm_head averaged, mlp_internal_dim_multiplier\n"
          "summed. A and B need the same n_layer, n_embd, n_head and vocab_size; they\n"
          "may be F32, F16, BF16 or Q8_0. OUT is F32, written beside itself and\n"
          "renamed into place (a failure leaves an existing OUT as it was); it must\n"
          "not be A or B.\n"
          "\n"
          "  -o, --output OUT     the merged model file (required)\n"
          "      --embed-from W   embed.weight and lm_head: mean (default) of A's and\n"
          "                       B's, or a or b to take that model's as they are\n"
          "  -h, --help           this help\n",
          out);
}

static const char *const U = "merge ";

int cmd_merge(int argc, char **argv)
{
    enum { OPT_EMBED_FROM = OPT_COMMAND };
    static const struct option longopts[] = {{"output", required_argument, NULL, 'o'},
                                             {"embed-from", required_argument, NULL, OPT_EMBED_FROM},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    bdh_merge_params p = bdh_merge_default_params();
    const char *out = NULL;
    int c;
    while ((c = getopt_long(argc, argv, ":ho:", longopts, NULL)) != -1) {
        if (c == 'h') {
            merge_help(stdout);
            return 0;
        } else if (c == 'o') {
            out = optarg;
        } else if (c == OPT_EMBED_FROM) {
            if (strcmp(optarg, "mean") == 0) p.embed = BDH_MERGE_EMBED_MEAN;
            else if (strcmp(optarg, "a") == 0) p.embed = BDH_MERGE_EMBED_A;
            else if (strcmp(optarg, "b") == 0) p.embed = BDH_MERGE_EMBED_B;
            else return usage_fail(U, "--embed-from needs mean, a or b, not '%s'", optarg);
        } else {
            return bad_option(U, c, argv);
        }
    }
    if (argc - optind != 2) return usage_fail(U, "merge needs two model files, A and B");
    if (!out) return usage_fail(U, "merge needs -o OUT, the file to write");
    const char *a = argv[optind], *b = argv[optind + 1];
    bdh_status st = bdh_model_merge(a, b, out, &p);
    if (st != BDH_OK) {
        return lib_fail("cannot merge", st); /* the library's message names the file */
    }
    bdh_model *m;
    bdh_config cfg;
    if (load_model(out, 1, BDH_WEIGHTS_F32, &m) != 0) return EXIT_RUNTIME;
    bdh_model_config(m, &cfg);
    printf("wrote %s: %d layers, n_embd %d, %d heads of %d neurons, embed and lm_head %s; %.2f MiB\n", out,
           (int)cfg.n_layer, (int)cfg.n_embd, (int)cfg.n_head, (int)cfg.n_neurons,
           p.embed == BDH_MERGE_EMBED_MEAN ? "averaged" : p.embed == BDH_MERGE_EMBED_A ? "from A" : "from B",
           mib(file_size(out)));
    bdh_model_free(m);
    return 0;
}
