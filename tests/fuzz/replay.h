/* Corpus replay for the libFuzzer targets: built with -DKM_FUZZ_REPLAY (gcc or clang, no
 * libFuzzer), a target runs LLVMFuzzerTestOneInput once per file named on the command line,
 * which turns a seed corpus or a crash reproducer into a plain regression test. */
#ifndef KM_FUZZ_REPLAY_H
#define KM_FUZZ_REPLAY_H

#ifdef KM_FUZZ_REPLAY
#include <stdint.h>
#include <stdio.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
main(int argc, char **argv)
{
    static uint8_t buf[1 << 20];
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            perror(argv[i]);
            return 1;
        }
        size_t n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        LLVMFuzzerTestOneInput(buf, n);
    }
    return 0;
}
#endif

#endif
