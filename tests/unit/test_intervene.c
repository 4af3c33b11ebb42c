/*
 * test_intervene.c: mean ablation's source, the batch mean of a captured
 * activation (lens_batch_mean).
 */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "core/intervene.h"

Test(intervene, batch_mean_is_the_mean_over_prompts) {
    float data[3][2][2] = {{{1, 2}, {3, 4}}, {{5, 6}, {7, 8}}, {{0, 1e8f}, {-3, 1}}};
    const lens_captured t = {.hook = {LENS_HOOK_RESID_PRE, 1},
                             .dtype = LENS_F32,
                             .ndim = 3,
                             .shape = {3, 2, 2},
                             .data = data};
    lens_captured mean;
    cr_assert_eq(lens_batch_mean(&t, &mean), 0);
    cr_assert_eq(mean.shape[0], 1);
    cr_assert(mean.shape[1] == 2 && mean.shape[2] == 2 && mean.ndim == 3);
    cr_assert(mean.hook.kind == LENS_HOOK_RESID_PRE && mean.hook.layer == 1);
    const float *m = mean.data;
    const float want[4] = {2.0f, (2.0f + 6.0f + 1e8f) / 3.0f, 7.0f / 3.0f, 13.0f / 3.0f};
    for (int k = 0; k < 4; k++)
        cr_expect_float_eq(m[k], want[k], 1e-6f * (1 + want[k]), "entry %d: %g", k, m[k]);
    free(mean.data);
}
