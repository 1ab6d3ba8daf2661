/* Private: NaN/Inf tests written so that the loops using them vectorise
 * (check.c, optim.c). */
#ifndef RETROPROP_FINITE_BITS_H
#define RETROPROP_FINITE_BITS_H

#include <string.h>

/* x - x is 0 for every finite x and NaN for NaN and +-Inf. Unlike isfinite()
 * this is plain arithmetic and a compare. */
#define NONFINITE(x) ((x) - (x) != 0)

/* ACC |= the bit pattern of X - X (REAL X; BITS, the unsigned integer of its
 * size): ACC stays 0 while every X is finite. A subtraction and an OR per
 * element, at full vector width, where ORing compare results widens. */
#define OR_NONFINITE_BITS(REAL, BITS, X, ACC)                                  \
    {                                                                         \
        const REAL difference_ = (X) - (X);                                   \
        BITS bits_;                                                           \
        memcpy(&bits_, &difference_, sizeof bits_);                           \
        (ACC) |= bits_;                                                       \
    }

#endif
