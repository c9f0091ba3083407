/* C kernels of the MaxUnpool Python layer (python_layers/gcnet_layers.py), loaded through ctypes by
 * python_layers/gcnet_native.py.  numpy needs three passes over memory for the forward (zero the top, float mask ->
 * int64 flat index, np.add.at); here each (n, c) plane is zeroed and filled while it is in cache, reading the float
 * mask directly.  Same results as the numpy kernels (tests/test_python_layers.py): values that share an argmax are
 * summed in the order of the pooled cells, starting from +0.  A mask entry outside [0, plane) (Caffe's MAX pooling
 * writes -1 only for a window without any value above -FLT_MAX) places nothing and receives a zero gradient. */
#include <stdint.h>
#include <string.h>

/* top (planes, plane) = 0; then top[p][mask[p][i]] += x[p][i] for i = 0 .. pooled - 1, per plane p. */
void max_unpool_forward(const float* x, const float* mask, int64_t planes, int64_t pooled, int64_t plane,
                        float* top) {
  const float limit = (float)plane;
  for (int64_t p = 0; p < planes; p++) {
    const float* xp = x + p * pooled;
    const float* mp = mask + p * pooled;
    float* tp = top + p * plane;
    memset(tp, 0, sizeof(float) * (size_t)plane);
    for (int64_t i = 0; i < pooled; i++) {
      const float m = mp[i];
      if (m >= 0.0f && m < limit) tp[(int64_t)m] += xp[i];   /* NaN fails both tests */
    }
  }
}

/* dx[p][i] = dtop[p][mask[p][i]] (0 where the mask is outside the plane). */
void max_unpool_backward(const float* dtop, const float* mask, int64_t planes, int64_t pooled, int64_t plane,
                         float* dx) {
  const float limit = (float)plane;
  for (int64_t p = 0; p < planes; p++) {
    const float* mp = mask + p * pooled;
    const float* tp = dtop + p * plane;
    float* dp = dx + p * pooled;
    for (int64_t i = 0; i < pooled; i++) {
      const float m = mp[i];
      dp[i] = (m >= 0.0f && m < limit) ? tp[(int64_t)m] : 0.0f;
    }
  }
}
