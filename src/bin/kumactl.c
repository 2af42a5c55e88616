/* kumactl: command-line client of the kuma-cp REST API. Everything lives in src/ctl. */
#include <km/ctl/cmd.h>

int
main(int argc, char **argv)
{
    return km_ctl_main(argc, argv);
}
