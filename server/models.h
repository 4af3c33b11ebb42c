/*
 * models.h: the daemon's model slots: loading, unloading and finding models.
 */
#ifndef SRV_MODELS_H
#define SRV_MODELS_H

#include <pthread.h>
#include <stddef.h>

#include "server/daemon.h"

/* Held while the CPU computes for a model (forward passes, weight
 * processing): OpenBLAS built on OpenMP must not be entered by two threads
 * at once, and the cores are shared anyway. GPU models don't take it. */
extern pthread_mutex_t srv_cpu_lock;

/* The present model called name (len bytes), or NULL. Takes the read side
 * of models_lock, which the caller must not hold. */
srv_model *srv_find_model(const char *name, size_t len);

/* srv_find_model, counting a job for the model found (jobs_out), so that
 * neither it nor its slot is freed until the job is answered. */
srv_model *srv_hold_model(const char *name, size_t len);

/* Calls f(m, user) for the present model called name (len bytes), with the
 * read side of models_lock held so that it cannot be unloaded meanwhile.
 * Returns -1, calling nothing, when there is none. */
int srv_with_model(const char *name, size_t len, void (*f)(const srv_model *m, void *user),
                   void *user);

/* Loads spec into slot sm (model, device, info JSON). Returns -1 with a
 * message. */
int srv_load_model(srv_model *sm, const srv_model_spec *spec, lens_err *err);

/* The weights of sm's checkpoint processed with `processing` (LENS_PROC_*
 * flags, of which those the family takes apply): sm's own model when they
 * are its processing, else a variant loaded from the same source on first
 * use, placed on the same device and kept, at most
 * limits.max_weight_variants of them (the least recently used is freed to
 * make room). Only sm's executor calls it. Returns NULL with a message when
 * the variants are off, or loading or placing fails (LENS_ERR_NO_MEMORY:
 * the device lacks the room). */
lens_model *srv_model_weights(srv_model *sm, unsigned processing, lens_err *err);

/* Frees what a slot holds (its executor stopped, and no job out for it:
 * jobs_out 0). */
void srv_unload_model(srv_model *sm);

#endif
