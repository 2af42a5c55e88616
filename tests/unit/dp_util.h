/* Helpers shared by the data plane engine tests (test_dp_engine*.c, test_dp_tls.c): clocks,
 * loopback sockets, publishing a snapshot and reading stats. */
#ifndef KM_TEST_DP_UTIL_H
#define KM_TEST_DP_UTIL_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#include <km/dp/engine.h>
#include <km/dp/snapshot.h>

uint64_t dpt_now_ms(void);
void dpt_sleep_ms(unsigned ms);
void dpt_sin_loopback(struct sockaddr_in *sin, uint16_t port);
/* Binds a socket (SO_REUSEPORT) to a free loopback port and leaves it open in *fd_out so the
 * port stays ours; returns the port. */
uint16_t dpt_reserve_port(int *fd_out);
/* Blocking connect to 127.0.0.1:<port> with 5 s I/O timeouts; returns the fd or -errno. */
int dpt_tconnect(uint16_t port);
void dpt_send_all(int fd, const void *p, size_t n);
/* Publishes <s> (drops the caller's reference) and waits until every worker applied it. */
void dpt_publish_and_wait(struct km_dp_engine *e, struct km_dp_snapshot *s);
/* Merged value of stat <name>, -1 when absent. */
int64_t dpt_stat_of(struct km_dp_engine *e, const char *name);

#endif
