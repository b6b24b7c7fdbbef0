/* errors.c - status code texts and errno mapping. */
#include <errno.h>

#include "errors.h"

const char *dnet_strerror(int err)
{
	switch (err) {
	case DNET_OK:
		return "success";
#define DNET_ERR_STR_(name, val, msg)                                              \
	case DNET_E##name:                                                         \
		return msg;
		DNET_ERRNO_MAP(DNET_ERR_STR_)
#undef DNET_ERR_STR_
	default:
		return "unknown error";
	}
}

const char *dnet_errname(int err)
{
	switch (err) {
	case DNET_OK:
		return "OK";
#define DNET_ERR_NAME_(name, val, msg)                                             \
	case DNET_E##name:                                                         \
		return #name;
		DNET_ERRNO_MAP(DNET_ERR_NAME_)
#undef DNET_ERR_NAME_
	default:
		return "UNKNOWN";
	}
}

int dnet_from_errno(int e)
{
	switch (e) {
	case 0:
		return DNET_OK;
	case ENOENT:
		return DNET_ENOENT;
	case EINVAL:
		return DNET_EINVAL;
	case ENOMEM:
		return DNET_ENOMEM;
	case ENOSPC:
	case EDQUOT:
		return DNET_ENOSPC;
	case EFBIG:
	case EMSGSIZE:
		return DNET_ETOOBIG;
	case ETIMEDOUT:
		return DNET_ETIMEDOUT;
	case ECONNREFUSED:
		return DNET_ECONNREFUSED;
	case ECONNRESET:
	case EPIPE:
		return DNET_ECONNRESET;
	case ENOTCONN:
		return DNET_ENOTCONN;
	case EOPNOTSUPP:
		return DNET_EUNSUPP;
	case EBUSY:
		return DNET_EBUSY;
	case EEXIST:
		return DNET_EEXIST;
	case EACCES:
	case EPERM:
	case EROFS:
		return DNET_EPERM;
	case EAGAIN:
		return DNET_EAGAIN;
	case EIO:
		return DNET_EIO;
	default:
		return DNET_ESYS;
	}
}
