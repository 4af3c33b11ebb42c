/*
 * process.h: TransformerLens's weight processing (from_pretrained's fold_ln,
 * center_writing_weights, center_unembed, fold_value_biases and
 * refactor_factored_attn_matrices), on lensd's internal layout.
 */
#ifndef LENS_PROCESS_H
#define LENS_PROCESS_H

#include "core/model.h"

/* Applies the LENS_PROC_* steps in `flags` to m's weights, in TL's order and
 * under TL's conditions (fold_ln only where LayerNorm weights exist, and it
 * turns LN into LNPre; centring of writing weights only before LN/LNPre).
 * Sets m->processing to the steps that actually applied. Returns -1 (weights
 * left partly processed; free the model) only when a step cannot run. */
int lens_process_weights(lens_model *m, unsigned flags, lens_err *err);

/* The steps that lens_process_weights, asked for `flags`, applies to the
 * checkpoint m was loaded from (whatever m's own processing): what
 * m->processing would be after loading it so. */
unsigned lens_processing_applied(const lens_model *m, unsigned flags);

#endif
