/* errors.h - internal alias of the public status-code list. */
#include <elliptics/errors.h>
