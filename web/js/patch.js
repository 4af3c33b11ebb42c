// Activation patching from the dashboard: POST /patch with a progress id,
// polling GET /v1/progress/{id} while the sweep runs, DELETE to cancel.

import { get, post, request } from "./api.js";

const POLL_MS = 250;

/**
 * Runs a sweep (body: POST /patch's, without progress_id) on the model at
 * modelPath; onProgress(done, total) follows it. Returns {result, cancel}
 * where result is the answer's promise and cancel() stops the sweep.
 */
export function startSweep(modelPath, body, onProgress) {
  const id = `dash-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  let finished = false;
  const poll = async () => {
    while (!finished) {
      try {
        const p = await get(`/v1/progress/${id}`);
        if (!finished) onProgress(p.done, p.total);
      } catch {
        // not started yet (queued), or just finished: keep going until the answer comes
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  };
  poll();
  const result = post(modelPath, { ...body, progress_id: id }).finally(() => {
    finished = true;
  });
  return { result, cancel: () => request("DELETE", `/v1/progress/${id}`).catch(() => {}) };
}
