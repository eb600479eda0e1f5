/* Attention rows under a key-set reweighting, one pass per row, for the CPU.
 *
 * The rows a plan's Reweight changes (VAR: the text after the image; ACT: its calibrated heads) need their weights
 * before the reweighting, so torch's fused kernel cannot compute them. In torch they cost about two dozen small ops
 * per call (scores, mask, softmax, key-set masses, factors, weighting, values), each ~5-15 us on a decoding row:
 * more than the fused kernel's whole call. Here each row is done in one loop nest: scores, softmax, the masses of
 * the unmodified row on the source, target and gate sets, the factors, and the weighted sum of values.
 *
 * The formula is attnlab.kernels.plan.Reweight's (Kang et al. 2025 for VAR, Yu et al. 2024 for ACT): for a row p
 * with m_S = sum_{j in S} p_j and m_T = sum_{j in T \ S} p_j,
 *     p'_j = a p_j on S,   p'_j = p_j (1 + (1 - a) m_S / m_T) on T \ S,   p'_j = p_j elsewhere,
 * where the row is reweighted: m_T > 0, the row is in the query set, and the gate holds (mass on `within` at least
 * min_mass and, with a `part` set, part / within at least min_share and within > 0). attnlab.kernels.cpu_rows builds
 * it, checks every argument and calls it through ctypes; the float64 textbook and the torch ops (reference.reweight_rows)
 * are its oracles in the tests. Built with -ffast-math for vectorised expf: scores must be finite (the caller clamps -inf
 * terms to -1e30, the masked score).
 *
 * Layouts: q [B, H, R, D], k [B, H, K, D], v [B, H, K, DV], out [B, H, R, DV], float32, contiguous. Masks, terms and
 * sets are read through strides in elements (0 for a broadcast axis), their last axis contiguous:
 *   allowed [B, H, R, K] bytes (nonzero: may attend) or NULL;  terms [B, H, R, K] floats added to the scores (already
 *   >= -1e30) or NULL;  each set [B, H, K] bytes, NULL for none (tgt NULL: every key outside S);
 *   qrows [B, R] bytes or NULL (every row);  factor [H].
 * A row with nothing to attend to gives 0.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MASKED (-1.0e30f)
#define LANES 16 /* floats per accumulator chunk: one AVX-512 register, two AVX ones */

/* q . k over D floats: LANES-wide partial sums, reduced once. */
static float dot(const float *a, const float *b, long n) {
    float acc[LANES] = {0.0f};
    long c = 0;
    for (; c + LANES <= n; c += LANES) {
#pragma omp simd
        for (int u = 0; u < LANES; u++) acc[u] += a[c + u] * b[c + u];
    }
    float total = 0.0f;
    for (; c < n; c++) total += a[c] * b[c];
    for (int u = 0; u < LANES; u++) total += acc[u];
    return total;
}

typedef float v16 __attribute__((vector_size(64)));
typedef int i16 __attribute__((vector_size(64)));

static v16 load16(const float *p) {
    v16 x;
    memcpy(&x, p, sizeof x);
    return x;
}

/* s[u] = q . k[u] for 16 keys k[0:16] (rows of D floats, D a multiple of 16): 16 lane-wise partial sums, then one
 * transpose-and-add tree (four levels of two-vector shuffles) instead of a horizontal sum per key. */
static void dot16(const float *q, const float *k, long D, float *s) {
    v16 acc[16];
    for (int u = 0; u < 16; u++) {
        v16 a = {0};
        for (long c = 0; c < D; c += 16) a += load16(q + c) * load16(k + u * D + c);
        acc[u] = a;
    }
    const i16 lo1 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const i16 hi1 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    const i16 lo2 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const i16 hi2 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
    const i16 lo3 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
    const i16 hi3 = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
    const i16 lo4 = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    const i16 hi4 = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
    for (int u = 0; u < 8; u++)  /* lanes 0-7: 8 partial sums of key 2u, lanes 8-15: of key 2u + 1 */
        acc[u] = __builtin_shuffle(acc[2 * u], acc[2 * u + 1], lo1) + __builtin_shuffle(acc[2 * u], acc[2 * u + 1], hi1);
    for (int u = 0; u < 4; u++)  /* 4 partial sums of each of keys 4u .. 4u + 3 */
        acc[u] = __builtin_shuffle(acc[2 * u], acc[2 * u + 1], lo2) + __builtin_shuffle(acc[2 * u], acc[2 * u + 1], hi2);
    for (int u = 0; u < 2; u++)  /* 2 partial sums of each of keys 8u .. 8u + 7 */
        acc[u] = __builtin_shuffle(acc[2 * u], acc[2 * u + 1], lo3) + __builtin_shuffle(acc[2 * u], acc[2 * u + 1], hi3);
    const v16 total = __builtin_shuffle(acc[0], acc[1], lo4) + __builtin_shuffle(acc[0], acc[1], hi4);
    memcpy(s, &total, sizeof total);
}

/* o[0:DV] = sum_j w[j] v[j, :], LANES output columns at a time held in registers. */
static void weigh_values(const float *w, const float *v, float *o, long K, long DV) {
    long c0 = 0;
    for (; c0 + LANES <= DV; c0 += LANES) {
        float acc[LANES] = {0.0f};
        for (long j = 0; j < K; j++) {
            const float wj = w[j];
            const float *vj = v + j * DV + c0;
#pragma omp simd
            for (int u = 0; u < LANES; u++) acc[u] += wj * vj[u];
        }
        memcpy(o + c0, acc, sizeof acc);
    }
    for (long c = c0; c < DV; c++) {
        float acc = 0.0f;
        for (long j = 0; j < K; j++) acc += w[j] * v[j * DV + c];
        o[c] = acc;
    }
}

int attnlab_reweighted_rows(
    const float *q, const float *k, const float *v, float *out,
    long B, long H, long R, long K, long D, long DV, float scale,
    const unsigned char *allowed, long al_sb, long al_sh, long al_sr,
    const float *terms, long te_sb, long te_sh, long te_sr,
    const unsigned char *src, long src_sb, long src_sh,
    const unsigned char *tgt, long tgt_sb, long tgt_sh,
    const unsigned char *within, long wi_sb, long wi_sh,
    const unsigned char *part, long pa_sb, long pa_sh,
    const unsigned char *qrows, long qr_sb,
    const float *factor, float min_mass, float min_share)
{
    const long n = K > 0 ? K : 1;
    float *e = (float *)malloc(sizeof(float) * (size_t)n);
    unsigned char *ones = (unsigned char *)malloc((size_t)n);
    if (e == NULL || ones == NULL) {
        free(e);
        free(ones);
        return 1;
    }
    memset(ones, 1, (size_t)n);
    for (long b = 0; b < B; b++) {
        for (long h = 0; h < H; h++) {
            const float *kb = k + (b * H + h) * K * D;
            const float *vb = v + (b * H + h) * K * DV;
            const unsigned char *s_set = src + b * src_sb + h * src_sh;
            const unsigned char *t_set = tgt ? tgt + b * tgt_sb + h * tgt_sh : ones;  /* NULL: every key (minus S) */
            const unsigned char *w_set = within ? within + b * wi_sb + h * wi_sh : ones;
            const unsigned char *p_set = part ? part + b * pa_sb + h * pa_sh : ones;
            const float a = factor[h];
            for (long i = 0; i < R; i++) {
                const float *qr = q + ((b * H + h) * R + i) * D;
                float *o = out + ((b * H + h) * R + i) * DV;
                const unsigned char *al = allowed ? allowed + b * al_sb + h * al_sh + i * al_sr : NULL;
                const float *te = terms ? terms + b * te_sb + h * te_sh + i * te_sr : NULL;
                long j0 = 0;
                if (D % 16 == 0)
                    for (; j0 + 16 <= K; j0 += 16) dot16(qr, kb + j0 * D, D, e + j0);
                for (long j = j0; j < K; j++) e[j] = dot(qr, kb + j * D, D);
                float m = 2.0f * MASKED;
                for (long j = 0; j < K; j++) {  /* scaled, masked and biased; m is the row's largest score */
                    const float s = (al && !al[j]) ? MASKED : e[j] * scale + (te ? te[j] : 0.0f);
                    e[j] = s;
                    m = s > m ? s : m;
                }
                if (m <= 0.5f * MASKED) {  /* nothing to attend to */
                    memset(o, 0, sizeof(float) * (size_t)DV);
                    continue;
                }
                float z = 0.0f, ms = 0.0f, mt = 0.0f, mw = 0.0f, mp = 0.0f;
#pragma omp simd reduction(+ : z, ms, mt, mw, mp)
                for (long j = 0; j < K; j++) {
                    const float x = expf(e[j] - m);
                    const float in_s = s_set[j] ? 1.0f : 0.0f;
                    e[j] = x;
                    z += x;
                    ms += x * in_s;
                    mt += t_set[j] ? x * (1.0f - in_s) : 0.0f;
                    mw += w_set[j] ? x : 0.0f;
                    mp += p_set[j] ? x : 0.0f;
                }
                const float inv = 1.0f / z;
                ms *= inv;
                mt *= inv;
                mw *= inv;
                mp *= inv;
                int apply = mt > 0.0f && (qrows == NULL || qrows[b * qr_sb + i]);
                if (within) {
                    apply = apply && mw >= min_mass;
                    if (part) apply = apply && mp >= min_share * mw && mw > 0.0f;
                }
                const float ds = apply ? a - 1.0f : 0.0f;                   /* factor on S, less 1 */
                const float dt = apply ? (1.0f - a) * ms / mt : 0.0f;       /* factor on T \ S, less 1 */
#pragma omp simd
                for (long j = 0; j < K; j++) {
                    const float in_s = s_set[j] ? 1.0f : 0.0f;
                    const float in_t = t_set[j] ? 1.0f - in_s : 0.0f;
                    e[j] *= inv * (1.0f + ds * in_s + dt * in_t);
                }
                weigh_values(e, vb, o, K, DV);
            }
        }
    }
    free(e);
    free(ones);
    return 0;
}
