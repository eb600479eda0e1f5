/* Attention rows under a key-set reweighting, one pass per row, for the CPU.
 *
 * The rows a plan's Reweight changes (VAR: the text after the image; ACT: its calibrated heads) need their weights
 * before the reweighting, so torch's fused kernel cannot compute them. In torch they cost about two dozen small ops
 * per call (scores, mask, softmax, key-set masses, factors, weighting, values), each ~5-15 us on a decoding row:
 * more than the fused kernel's whole call. Here each row is done in one loop nest: scores, softmax, the masses of
 * the unmodified row on the source, target and gate sets, the factors, and the weighted sum of values. A call of
 * several rows per head (VAR's rows after the image at prefill, ACT's head on every prefill row) transposes each
 * head's keys once and reads them for every row.
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
 * Layouts: q [B, H, R, D], k [B, H, K, D], v [B, H, K, DV], float32, each row contiguous and the batch, head and row
 * axes read through strides in elements (a head slice of a wider tensor, or a [B, N, H, D] projection seen as
 * [B, H, N, D], needs no copy); out [B, H, R, DV] the same way (rows written where the caller's output holds them:
 * a head slice of torch's output, the rows after the image of a token-major output).
 * Masks, terms and sets are read through strides in elements (0 for a broadcast axis), their last axis contiguous:
 *   allowed [B, H, R, K] bytes (nonzero: may attend) or NULL;  terms [B, H, R, K] floats added to the scores (already
 *   >= -1e30) or NULL;  each set [B, H, K] bytes, NULL for none (tgt NULL: every key outside S);
 *   qrows [B, R] bytes or NULL (every row);  factor [H].
 * A row with nothing to attend to gives 0.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MASKED (-1.0e30f)
#define EXP_FLOOR (-87.0f) /* expf of anything lower is below FLT_MIN, a denormal or 0 */
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

/* s[u] = q . k[u] for 16 keys k[0:16] (rows of D floats k_sr apart, D a multiple of 16): 16 lane-wise partial sums, then one
 * transpose-and-add tree (four levels of two-vector shuffles) instead of a horizontal sum per key. */
static void dot16(const float *q, const float *k, long D, long k_sr, float *s) {
    v16 acc[16];
    for (int u = 0; u < 16; u++) {
        v16 a = {0};
        for (long c = 0; c < D; c += 16) a += load16(q + c) * load16(k + u * k_sr + c);
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

/* o[0:DV] = sum_j w[j] v[j, :] (value rows v_sr floats apart), 16 output columns at a time in four independent sums (keys j mod 4), so the
 * multiply-adds do not wait on one another. */
static void weigh_values(const float *w, const float *v, long v_sr, float *o, long K, long DV) {
    long c0 = 0;
    for (; c0 + 16 <= DV; c0 += 16) {
        v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        long j = 0;
        for (; j + 4 <= K; j += 4) {
            const float *vj = v + j * v_sr + c0;
            a0 += w[j] * load16(vj);
            a1 += w[j + 1] * load16(vj + v_sr);
            a2 += w[j + 2] * load16(vj + 2 * v_sr);
            a3 += w[j + 3] * load16(vj + 3 * v_sr);
        }
        for (; j < K; j++) a0 += w[j] * load16(v + j * v_sr + c0);
        const v16 total = (a0 + a1) + (a2 + a3);
        memcpy(o + c0, &total, sizeof total);
    }
    for (long c = c0; c < DV; c++) {
        float acc = 0.0f;
        for (long j = 0; j < K; j++) acc += w[j] * v[j * v_sr + c];
        o[c] = acc;
    }
}

/* The 16 x 16 tile t (rows of 16 floats) transposed in place: four levels of two-vector shuffles; at level s, rows
 * i and i + s trade their s-lane blocks (the block transpose [[A B] [C D]] -> [[A C] [B D]], then the same inside
 * each block). */
static void transpose16(v16 t[16]) {
    static const i16 lo[4] = {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
                              {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
                              {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
                              {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}};
    static const i16 hi[4] = {{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
                              {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
                              {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
                              {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}};
#pragma GCC unroll 4
    for (int level = 0; level < 4; level++) {
        const int s = 8 >> level;
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {  /* the g-th row whose bit s is clear, and its partner i + s */
            const int i = ((g & ~(s - 1)) << 1) | (g & (s - 1));
            const v16 a = t[i], b = t[i + s];
            t[i] = __builtin_shuffle(a, b, lo[level]);
            t[i + s] = __builtin_shuffle(a, b, hi[level]);
        }
    }
}

/* kt[c * kp + j] = k[j * k_sr + c]: a head's keys transposed into columns of kp floats, zero past the K keys, so
 * that 16 keys' scores are D multiply-adds of one broadcast query element each (score_blocks). With D a multiple
 * of 16 the keys go through transpose16 in 16 x 16 tiles (the last one zero-filled), else element by element. */
static void transpose_keys(const float *k, long k_sr, float *kt, long K, long D, long kp) {
    if (D % 16 == 0) {
        for (long j0 = 0; j0 < kp; j0 += 16) {
            const long n = K - j0 < 16 ? K - j0 : 16;  /* keys in this tile; the rest are zero */
            for (long c0 = 0; c0 < D; c0 += 16) {
                v16 t[16];
                for (int u = 0; u < 16; u++) {
                    const v16 zero = {0};
                    t[u] = u < n ? load16(k + (j0 + u) * k_sr + c0) : zero;
                }
                transpose16(t);
                for (int u = 0; u < 16; u++) memcpy(kt + (c0 + u) * kp + j0, &t[u], sizeof(v16));
            }
        }
        return;
    }
    for (long c = 0; c < D; c++) {
        float *col = kt + c * kp;
        for (long j = 0; j < K; j++) col[j] = k[j * k_sr + c];
        for (long j = K; j < kp; j++) col[j] = 0.0f;
    }
}

/* s[0:16 n] = q . k[j] for the 16 n keys whose transposed columns start at kt (stride kp between head
 * dimensions): n independent 16-key sums, so the multiply-adds of one block do not wait on one another. */
static inline void score_blocks(const float *q, const float *kt, long D, long kp, float *s, const int n) {
    v16 acc[4] = {{0}, {0}, {0}, {0}};
    for (long c = 0; c < D; c++) {
        const float qc = q[c];
        const float *col = kt + c * kp;
        for (int u = 0; u < n; u++) acc[u] += qc * load16(col + 16 * u);
    }
    memcpy(s, acc, sizeof(v16) * (size_t)n);
}

/* e[0:kp] = q . k[j] for every key of a head (transposed into kt), four blocks of 16 keys at a time. */
static void scores(const float *q, const float *kt, long D, long kp, float *e) {
    long j0 = 0;
    for (; j0 + 64 <= kp; j0 += 64) score_blocks(q, kt + j0, D, kp, e + j0, 4);
    if (j0 + 32 <= kp) {
        score_blocks(q, kt + j0, D, kp, e + j0, 2);
        j0 += 32;
    }
    if (j0 < kp) score_blocks(q, kt + j0, D, kp, e + j0, 1);
}

int attnlab_reweighted_rows(
    const float *q, long q_sb, long q_sh, long q_sr, const float *k, long k_sb, long k_sh, long k_sr,
    const float *v, long v_sb, long v_sh, long v_sr,
    float *out, long o_sb, long o_sh, long o_sr, long B, long H, long R, long K, long D, long DV, float scale,
    const unsigned char *allowed, long al_sb, long al_sh, long al_sr,
    const float *terms, long te_sb, long te_sh, long te_sr,
    const unsigned char *src, long src_sb, long src_sh,
    const unsigned char *tgt, long tgt_sb, long tgt_sh,
    const unsigned char *within, long wi_sb, long wi_sh,
    const unsigned char *part, long pa_sb, long pa_sh,
    const unsigned char *qrows, long qr_sb,
    const float *factor, float min_mass, float min_share)
{
    const long kp = ((K > 0 ? K : 1) + 15) / 16 * 16;  /* keys rounded up to whole 16-key blocks */
    /* one row: q . k by the transpose-and-add tree (no transposed copy to pay for); several rows share a head's
     * transposed keys, and each block of 16 scores is D broadcast multiply-adds */
    const int transposed = R > 1;
    float *e = (float *)malloc(sizeof(float) * (size_t)kp);
    float *kt = transposed ? (float *)malloc(sizeof(float) * (size_t)(kp * D)) : NULL;
    unsigned char *ones = (unsigned char *)malloc((size_t)kp);
    if (e == NULL || ones == NULL || (transposed && kt == NULL)) {
        free(e);
        free(kt);
        free(ones);
        return 1;
    }
    memset(ones, 1, (size_t)kp);
    for (long b = 0; b < B; b++) {
        for (long h = 0; h < H; h++) {
            const float *kb = k + b * k_sb + h * k_sh;
            const float *vb = v + b * v_sb + h * v_sh;
            const unsigned char *s_set = src + b * src_sb + h * src_sh;
            const unsigned char *t_set = tgt ? tgt + b * tgt_sb + h * tgt_sh : ones;  /* NULL: every key (minus S) */
            const unsigned char *w_set = within ? within + b * wi_sb + h * wi_sh : ones;
            const unsigned char *p_set = part ? part + b * pa_sb + h * pa_sh : ones;
            const float a = factor[h];
            if (transposed) transpose_keys(kb, k_sr, kt, K, D, kp);
            for (long i = 0; i < R; i++) {
                const float *qr = q + b * q_sb + h * q_sh + i * q_sr;
                float *o = out + b * o_sb + h * o_sh + i * o_sr;
                const unsigned char *al = allowed ? allowed + b * al_sb + h * al_sh + i * al_sr : NULL;
                const float *te = terms ? terms + b * te_sb + h * te_sh + i * te_sr : NULL;
                if (transposed) {
                    scores(qr, kt, D, kp, e);
                } else {
                    long j0 = 0;
                    if (D % 16 == 0)
                        for (; j0 + 16 <= K; j0 += 16) dot16(qr, kb + j0 * k_sr, D, k_sr, e + j0);
                    for (long j = j0; j < K; j++) e[j] = dot(qr, kb + j * k_sr, D);
                }
                if (te) {  /* scaled and biased */
#pragma omp simd
                    for (long j = 0; j < K; j++) e[j] = e[j] * scale + te[j];
                } else {
#pragma omp simd
                    for (long j = 0; j < K; j++) e[j] *= scale;
                }
                if (al) {  /* masked */
#pragma omp simd
                    for (long j = 0; j < K; j++) e[j] = al[j] ? e[j] : MASKED;
                }
                float m = 2.0f * MASKED;  /* the row's largest score */
#pragma omp simd reduction(max : m)
                for (long j = 0; j < K; j++) m = e[j] > m ? e[j] : m;
                if (m <= 0.5f * MASKED) {  /* nothing to attend to */
                    memset(o, 0, sizeof(float) * (size_t)DV);
                    continue;
                }
                /* the weights, over whole 16-key blocks (the padding keys are masked) so that every expf is a
                 * vector call; a score more than EXP_FLOOR below the row's largest gets weight 0 (its share would be
                 * under 1e-38), which keeps masked keys off the vector expf's slow path for out-of-range inputs */
                for (long j = K; j < kp; j++) e[j] = MASKED;
#pragma omp simd
                for (long j = 0; j < kp; j++) {
                    const float x = e[j] - m;
                    const float y = expf(x < EXP_FLOOR ? EXP_FLOOR : x);
                    e[j] = x < EXP_FLOOR ? 0.0f : y;
                }
                float z = 0.0f, ms = 0.0f, mt = 0.0f, mw = 0.0f, mp = 0.0f;
#pragma omp simd reduction(+ : z, ms, mt, mw, mp)
                for (long j = 0; j < K; j++) {
                    const float x = e[j];
                    const float in_s = s_set[j] ? 1.0f : 0.0f;
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
                weigh_values(e, vb, v_sr, o, K, DV);
            }
        }
    }
    free(e);
    free(kt);
    free(ones);
    return 0;
}
