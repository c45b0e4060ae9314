/* Bounds of the token bucket (bucket.pxd): 1 byte = 8e9 nanobits; depth and rate limits keep
   every product inside int64. */
#ifndef NETPROBE_BUCKET_H
#define NETPROBE_BUCKET_H
#include <stdint.h>
#define NETPROBE_BUCKET_NBIT_PER_BYTE ((int64_t)8000000000LL)
#define NETPROBE_BUCKET_MAX_DEPTH ((int64_t)1 << 30)
#define NETPROBE_BUCKET_MAX_RATE ((int64_t)1 << 50)
#endif
