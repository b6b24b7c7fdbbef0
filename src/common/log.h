/* log.h - leveled logging to stderr with timestamps; thread-safe (one write per line). */
#ifndef DNET_LOG_H
#define DNET_LOG_H

enum dnet_log_level { DNET_LOG_ERROR = 0, DNET_LOG_WARN, DNET_LOG_INFO, DNET_LOG_DEBUG };

extern int dnet_log_level;
/* Parse "error|warn|info|debug"; returns -1 on unknown names. */
int dnet_log_level_parse(const char *s);
void dnet_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define dnet_log_error(...) dnet_log(DNET_LOG_ERROR, __VA_ARGS__)
#define dnet_log_warn(...) dnet_log(DNET_LOG_WARN, __VA_ARGS__)
#define dnet_log_info(...) dnet_log(DNET_LOG_INFO, __VA_ARGS__)
#define dnet_log_debug(...)                                                        \
	do {                                                                       \
		if (dnet_log_level >= DNET_LOG_DEBUG)                              \
			dnet_log(DNET_LOG_DEBUG, __VA_ARGS__);                     \
	} while (0)

#endif
