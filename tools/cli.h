/* cli.h - shared pieces of the `elliptics` command-line tool: global options, error
 * reporting, exit codes, key escaping; and the check/bench entry points. */
#ifndef DNET_CLI_H
#define DNET_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "elliptics/elliptics.h"

#define CLI_EXIT_OK 0
#define CLI_EXIT_NOTFOUND 1
#define CLI_EXIT_USAGE 2
#define CLI_EXIT_FAIL 3

struct cli {
	const char **remotes;
	int nremotes;
	int timeout_ms;
	const char *auth; /* NAME:SECRET: the client key (-k or $ELLIPTICS_KEY) */
	int w, r;         /* copies: write quorum and read copies (0: defaults) */
	const char *tls_ca, *tls_cert, *tls_key; /* --tls-*: TLS to every node */
};

/* A handle with every remote and the timeout set. Returns 0 or DNET_E*. */
int cli_client(const struct cli *g, dnet_client **out);
/* A handle talking to one remote only. */
int cli_client_one(const struct cli *g, const char *remote, dnet_client **out);
/* The node a failure should be attributed to: the connected node, else the remotes. */
const char *cli_node(const struct cli *g, const dnet_client *c);
int cli_exit_code(int err);
/* Quoted, escaped form of a key for messages (malloc()ed; never NULL on success). */
char *cli_escape(const void *key, size_t len);
/* JSON string literal of arbitrary bytes (invalid UTF-8 bytes as \u00XX). */
void cli_json_str(FILE *f, const void *data, size_t n);
/* `elliptics: ...` on stderr, one line. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Usage error: message, a hint, exit status 2. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Number of online CPUs (>= 1). */
int cli_nproc(void);

int cmd_check(const struct cli *g, int argc, char **argv);
int cmd_bench(const struct cli *g, int argc, char **argv);
void usage_check(void);
void usage_bench(void);

#endif
