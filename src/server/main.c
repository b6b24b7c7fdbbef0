/* main.c - ellipticsd: parse options, start the node, stop it in order on
 * SIGTERM/SIGINT. */
#include <signal.h>
#include <stdio.h>

#include "common/log.h"
#include "server.h"
#include "storage/fault.h"

int main(int argc, char **argv)
{
	static struct dnet_server srv;
	struct dnet_server *s = &srv;
	dnet_srv = s;

	dnet_config_defaults(&s->cfg);
	int rc = dnet_config_parse(&s->cfg, argc, argv);
	if (rc == 1)
		return 0;
	if (rc)
		return 2;
	dnet_log_level = s->cfg.log_level;
	/* ELLIPTICS_FAULT: fault injection for crash-safety tests (storage/fault.h). */
	if (dnet_fault_env() != 0)
		return 2;

	/* Signals are taken synchronously by main via sigwait; every thread created
	 * from here on inherits the mask. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	rc = dnet_server_start(s);
	if (rc)
		return rc;

	int sig = 0;
	for (;;) {
		if (sigwait(&set, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			dnet_log_info("SIGHUP: nothing to reload yet");
			continue;
		}
		break;
	}
	dnet_log_info("%s received: stopping (no new requests; finishing queued ones)",
		      sig == SIGINT ? "SIGINT" : "SIGTERM");
	dnet_server_stop(s);
	dnet_log_info("stopped");
	return 0;
}
