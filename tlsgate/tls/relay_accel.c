/* The relay's per-read loops in C: the optional accelerator of tlsgate/tls/engine.py,
 * compiled by tlsgate/tls/relayc_build.py into the module tlsgate.tls._relayc.
 *
 * Why: one socket read often completes several TLS records, and every record costs one
 * SSL_read. Called from Python through cffi, each call (plus the loop around it) costs about
 * 0.5 us -- as much as decrypting a small record. tg_decrypt_send / tg_encrypt_send run the same
 * sequence of OpenSSL calls as the pure-Python ServerSession.decrypt_out / encrypt_out in
 * engine.py, plus the write(2) to the other socket the relay does with os.write, as one call
 * from Python per socket read. One difference: a large read from the client is handed to
 * OpenSSL in place instead of copied into the connection's BIO (see tg_decrypt).
 *
 * They call the OpenSSL that pyOpenSSL/cryptography bundle (statically linked, its symbols
 * not exported), so they do not link against any libssl: engine.py hands over the function
 * addresses from the cffi bindings once, at import (tg_init, tg_init_direct). Nothing here
 * keeps state per connection or touches the error queue (error handling stays in Python); the
 * only allocations are OpenSSL's: the BIOs of an in-place read, and the SSL object and BIOs
 * of a new session or a BIO swap (tg_new_session, tg_recycle_bios).
 */

#include <errno.h>
#include <unistd.h>

typedef int (*tg_io_fn)(void *, void *, int);
typedef int (*tg_err_fn)(const void *, int);

static tg_io_fn tg_BIO_write, tg_BIO_read, tg_SSL_read, tg_SSL_write;
static tg_err_fn tg_SSL_get_error;
static int tg_want_read = -1, tg_zero_return = -1;

/* For large reads (tg_init_direct): a read-only memory BIO over the caller's buffer */
static void *(*tg_BIO_new_mem_buf)(void *, int);
static long (*tg_BIO_set_mem_eof_return)(void *, int);
static void (*tg_SSL_set_bio)(void *, void *, void *);
static void *(*tg_BIO_new)(void *);
static long (*tg_BIO_get_mem_data)(void *, char **);
static void *tg_mem_method;
static int tg_direct_min = 0x7fffffff;

static int tg_init(void *bio_write, void *bio_read, void *ssl_read, void *ssl_write,
                   void *ssl_get_error, int want_read, int zero_return)
{
    tg_BIO_write = (tg_io_fn)bio_write;
    tg_BIO_read = (tg_io_fn)bio_read;
    tg_SSL_read = (tg_io_fn)ssl_read;
    tg_SSL_write = (tg_io_fn)ssl_write;
    tg_SSL_get_error = (tg_err_fn)ssl_get_error;
    tg_want_read = want_read;
    tg_zero_return = zero_return;
    return 1;
}

static int tg_init_direct(void *bio_new_mem_buf, void *bio_set_mem_eof_return, void *ssl_set_bio,
                          void *bio_new, void *bio_get_mem_data, void *mem_method, int direct_min)
{
    tg_BIO_get_mem_data = (long (*)(void *, char **))bio_get_mem_data;
    tg_BIO_new_mem_buf = (void *(*)(void *, int))bio_new_mem_buf;
    tg_BIO_set_mem_eof_return = (long (*)(void *, int))bio_set_mem_eof_return;
    tg_SSL_set_bio = (void (*)(void *, void *, void *))ssl_set_bio;
    tg_BIO_new = (void *(*)(void *))bio_new;
    tg_mem_method = mem_method;
    tg_direct_min = direct_min;
    return 1;
}

/* Sessions and BIO swaps (tg_init_session): once per connection each, but seven and nine
 * calls through cffi from Python */
static void *(*tg_SSL_new)(void *);
static void (*tg_SSL_free)(void *);
static void (*tg_SSL_set_accept_state)(void *);
static long (*tg_SSL_set_mode)(void *, long);
static int (*tg_BIO_free)(void *);

static int tg_init_session(void *ssl_new, void *ssl_free, void *set_accept_state,
                           void *set_mode, void *bio_free)
{
    tg_SSL_new = (void *(*)(void *))ssl_new;
    tg_SSL_free = (void (*)(void *))ssl_free;
    tg_SSL_set_accept_state = (void (*)(void *))set_accept_state;
    tg_SSL_set_mode = (long (*)(void *, long))set_mode;
    tg_BIO_free = (int (*)(void *))bio_free;
    return 1;
}

/* What pyOpenSSL's Connection(ctx, None) + set_accept_state() do, minus the wrapper object: a
 * server SSL object with `mode` set, on two fresh memory BIOs (out[0]: read, out[1]: write).
 * Returns the SSL object, or NULL when out of memory (then nothing is left allocated). */
static void *tg_new_session(void *ctx, long mode, void **out)
{
    void *ssl = tg_SSL_new(ctx), *r, *w;
    if (!ssl)
        return NULL;
    r = tg_BIO_new(tg_mem_method);
    w = tg_BIO_new(tg_mem_method);
    if (!r || !w) {
        if (r)
            tg_BIO_free(r);
        if (w)
            tg_BIO_free(w);
        tg_SSL_free(ssl);
        return NULL;
    }
    tg_SSL_set_mode(ssl, mode);
    tg_SSL_set_accept_state(ssl);
    tg_SSL_set_bio(ssl, r, w);
    out[0] = r;
    out[1] = w;
    return ssl;
}

/* ServerSession.recycle_bios: two new memory BIOs holding what the SSL object's current ones
 * hold (unread input, queued output), installed in place of them (which frees the old pair).
 * out[0]/out[1] get the new read/write BIO. Returns 0, or -1 when out of memory (nothing
 * changed). */
static int tg_recycle_bios(void *ssl, void *rbio, void *wbio, void **out)
{
    void *r = tg_BIO_new(tg_mem_method), *w = tg_BIO_new(tg_mem_method);
    char *p;
    long n;
    if (!r || !w)
        goto fail;
    n = tg_BIO_get_mem_data(rbio, &p);
    if (n > 0 && tg_BIO_write(r, p, (int)n) != n)
        goto fail;
    n = tg_BIO_get_mem_data(wbio, &p);
    if (n > 0 && tg_BIO_write(w, p, (int)n) != n)
        goto fail;
    tg_SSL_set_bio(ssl, r, w);
    out[0] = r;
    out[1] = w;
    return 0;
fail:
    if (r)
        tg_BIO_free(r);
    if (w)
        tg_BIO_free(w);
    return -1;
}

/* Feed in[0:n] to the read BIO, decrypt every complete record into out (at most cap bytes)
 * and return the plaintext length. res[0] = SSL_get_error() of the read that ended the loop.
 * If that is not a fatal error, res[1] = what the record layer queued for the peer meanwhile
 * (a KeyUpdate answer), moved into aux (<= 0: nothing). res[3] = 1 if the read BIO was
 * replaced (a large read taken in place; *newrbio is the new one). */
static int tg_decrypt(void *ssl, void *rbio, void *wbio, char *in, int n, char *out, int cap,
                      char *aux, int auxcap, int *res, void **newrbio)
{
    int total = 0, r;
    void *direct = 0;
    char *pending;
    if (n >= tg_direct_min && tg_BIO_get_mem_data(rbio, &pending) <= 0) {
        /* A large read: let the record layer read the ciphertext straight from `in` instead of
         * copying it into the connection's BIO first (one memcpy of every byte less, and the
         * BIO never grows). The record layer copies what it takes into its own buffer, and
         * reading until WANT_READ drains this BIO completely, so `in` is not referred to once
         * this returns: the BIO is replaced by a new, empty memory BIO before that. Only when
         * the connection's read BIO is empty (it is after any earlier read that ended in
         * WANT_READ); SSL_set_bio frees it, and *newrbio tells the caller which BIO is the
         * read BIO now (NULL: out of memory). If the read-only BIO cannot be made, the bytes
         * are copied as usual. */
        direct = tg_BIO_new_mem_buf(in, n);
        if (direct) {
            tg_BIO_set_mem_eof_return(direct, -1); /* empty means "retry", not EOF */
            tg_SSL_set_bio(ssl, direct, wbio);
        }
    }
    if (n > 0 && !direct)
        tg_BIO_write(rbio, in, n);
    while ((r = tg_SSL_read(ssl, out + total, cap - total)) > 0)
        total += r;
    res[0] = tg_SSL_get_error(ssl, r);
    res[1] = 0;
    if (res[0] == tg_want_read || res[0] == tg_zero_return)
        res[1] = tg_BIO_read(wbio, aux, auxcap);
    res[3] = 0;
    if (direct) {
        void *fresh = tg_BIO_new(tg_mem_method);
        if (fresh)
            tg_SSL_set_bio(ssl, fresh, wbio); /* frees `direct` */
        *newrbio = fresh;
        res[3] = 1;
    }
    return total;
}

/* Encrypt in[0:n] (all of it: partial writes are off) and move the records into out.
 * Returns their length, or -1 if SSL_write did not take all n bytes. */
static int tg_encrypt(void *ssl, void *wbio, char *in, int n, char *out, int cap)
{
    int o;
    if (tg_SSL_write(ssl, in, n) != n)
        return -1;
    o = tg_BIO_read(wbio, out, cap);
    return o > 0 ? o : 0;
}

/* write(2) that retries on EINTR (as os.write does); any other error or EAGAIN counts as
 * nothing written: the caller hands the rest to its transport, which meets the error itself. */
static int tg_write_fd(int fd, const char *buf, int n)
{
    ssize_t w;
    do {
        w = write(fd, buf, (size_t)n);
    } while (w < 0 && errno == EINTR);
    return w < 0 ? 0 : (int)w;
}

/* tg_decrypt, then (fd >= 0, no fatal error) write the plaintext to fd: res[2] = bytes written. */
static int tg_decrypt_send(void *ssl, void *rbio, void *wbio, char *in, int n, char *out,
                           int cap, char *aux, int auxcap, int fd, int *res, void **newrbio)
{
    int total = tg_decrypt(ssl, rbio, wbio, in, n, out, cap, aux, auxcap, res, newrbio);
    res[2] = 0;
    if (fd >= 0 && total > 0 && (res[0] == tg_want_read || res[0] == tg_zero_return))
        res[2] = tg_write_fd(fd, out, total);
    return total;
}

/* tg_encrypt, then (fd >= 0) write the records to fd: res[2] = bytes written. */
static int tg_encrypt_send(void *ssl, void *wbio, char *in, int n, char *out, int cap, int fd,
                           int *res)
{
    int o = tg_encrypt(ssl, wbio, in, n, out, cap);
    res[2] = 0;
    if (fd >= 0 && o > 0)
        res[2] = tg_write_fd(fd, out, o);
    return o;
}

/* ---- Session-ticket keys with a grace period ------------------------------------------------
 * Not part of the relay loops, but the same kind of code: a few OpenSSL calls that must run
 * in C (here because OpenSSL calls them, once per ticket it makes or reads). tlsgate's ticket
 * keys rotate by period (node.session_ticket_key_rotation); OpenSSL's own key slot
 * (SSL_CTRL_SET_TLSEXT_TICKET_KEYS) holds one key, so at each rotation every ticket a
 * disconnected client holds stopped resuming. tg_ticket_cb is OpenSSL's ticket-key callback
 * (SSL_CTX_set_tlsext_ticket_key_evp_cb) over three keys: it encrypts new tickets with the
 * current key and accepts tickets under the current, the previous or the next period's one
 * (asking OpenSSL to issue a fresh ticket for the latter two). The next period's key is
 * there because workers and nodes re-key at the same wall-clock instant only as far as their
 * clocks and timers agree: a ticket made by one that has rotated already resumes on one that
 * has not yet. The key format and the ticket format are OpenSSL's
 * own (16-byte name, HMAC-SHA256 key, AES-256-CBC key), so tickets made by OpenSSL's key slot
 * with the same key -- an older tlsgate, a node without this module -- resume too. The keys
 * live in the SSL_CTX's ex_data, freed (and wiped) by OpenSSL with the context; the function
 * addresses come from tlsgate/tls/unbound.py (the bundled OpenSSL's symbol table). */

#include <stdlib.h>
#include <string.h>

typedef struct {
    unsigned char name[16], hmac[32], aes[32]; /* SSL_CTRL_SET_TLSEXT_TICKET_KEYS layout */
} tg_tkey;

typedef struct {
    tg_tkey cur, prev, next;
    int has_prev, has_next;
} tg_tkeys;

typedef struct { /* OSSL_PARAM */
    const char *key;
    unsigned int data_type;
    void *data;
    size_t data_size;
    size_t return_size;
} tg_param;

static int (*tg_RAND_bytes)(unsigned char *, int);
static int (*tg_EncryptInit)(void *, const void *, void *, const unsigned char *,
                             const unsigned char *);
static int (*tg_DecryptInit)(void *, const void *, void *, const unsigned char *,
                             const unsigned char *);
static const void *(*tg_aes_256_cbc)(void);
static int (*tg_MAC_set_params)(void *, const tg_param *);
static void *(*tg_SSL_get_SSL_CTX)(const void *);
static int (*tg_SSL_version)(const void *);
static void *(*tg_CTX_get_ex_data)(const void *, int);
static int (*tg_CTX_set_ex_data)(void *, int, void *);
static int (*tg_set_evp_cb)(void *, void *);
static void (*tg_cleanse)(void *, size_t);
static int tg_tk_index = -1;

static void tg_tkeys_free(void *parent, void *ptr, void *ad, int idx, long argl, void *argp)
{
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    if (ptr) {
        tg_cleanse(ptr, sizeof(tg_tkeys));
        free(ptr);
    }
}

/* One key into the cipher and MAC contexts OpenSSL hands over (as its own key slot does). */
static int tg_tkey_use(const tg_tkey *k, unsigned char *iv, void *cctx, void *hctx, int enc)
{
    static char digest[] = "SHA256";
    tg_param params[3] = {
        {"key", 5 /* OSSL_PARAM_OCTET_STRING */, (void *)k->hmac, sizeof k->hmac, (size_t)-1},
        {"digest", 4 /* OSSL_PARAM_UTF8_STRING */, digest, sizeof digest - 1, (size_t)-1},
        {0, 0, 0, 0, 0},
    };
    int ok = enc ? tg_EncryptInit(cctx, tg_aes_256_cbc(), 0, k->aes, iv)
                 : tg_DecryptInit(cctx, tg_aes_256_cbc(), 0, k->aes, iv);
    return ok == 1 && tg_MAC_set_params(hctx, params) == 1;
}

/* SSL_CTX_set_tlsext_ticket_key_evp_cb's callback. Encrypting: the current key (1), or no
 * ticket (0) if the context has no keys. Decrypting: 2 ("valid, send a fresh one") under the
 * previous or the next key, and under the current key in TLS 1.3 (what OpenSSL's own key
 * slot does: a TLS 1.3 resumption always brings a new ticket); 1 under the current key in
 * TLS 1.2; 0 for any other key name (a full handshake). */
static int tg_ticket_cb(void *ssl, unsigned char *name, unsigned char *iv, void *cctx,
                        void *hctx, int enc)
{
    const tg_tkeys *k = tg_CTX_get_ex_data(tg_SSL_get_SSL_CTX(ssl), tg_tk_index);
    if (!k)
        return 0;
    if (enc) {
        if (tg_RAND_bytes(iv, 16) != 1)
            return -1;
        memcpy(name, k->cur.name, 16);
        return tg_tkey_use(&k->cur, iv, cctx, hctx, 1) ? 1 : -1;
    }
    if (memcmp(name, k->cur.name, 16) == 0)
        return tg_tkey_use(&k->cur, iv, cctx, hctx, 0)
                   ? (tg_SSL_version(ssl) >= 0x0304 /* TLS1_3_VERSION */ ? 2 : 1) : -1;
    if (k->has_prev && memcmp(name, k->prev.name, 16) == 0)
        return tg_tkey_use(&k->prev, iv, cctx, hctx, 0) ? 2 : -1;
    if (k->has_next && memcmp(name, k->next.name, 16) == 0)
        return tg_tkey_use(&k->next, iv, cctx, hctx, 0) ? 2 : -1;
    return 0;
}

/* The OpenSSL functions (addresses), and the SSL_CTX ex_data index for the keys; returns 1,
 * or 0 if OpenSSL gave no index. */
static int tg_tickets_init(void *rand_bytes, void *encrypt_init, void *decrypt_init,
                           void *aes_256_cbc, void *mac_set_params, void *ssl_get_ssl_ctx,
                           void *ctx_get_ex_data, void *ctx_set_ex_data, void *set_evp_cb,
                           void *cleanse, void *get_ex_new_index, void *ssl_version)
{
    int (*new_index)(int, long, void *, void *, void *, void *) =
        (int (*)(int, long, void *, void *, void *, void *))get_ex_new_index;
    if (tg_tk_index >= 0)
        return 1;
    tg_RAND_bytes = (int (*)(unsigned char *, int))rand_bytes;
    tg_EncryptInit = (int (*)(void *, const void *, void *, const unsigned char *,
                              const unsigned char *))encrypt_init;
    tg_DecryptInit = (int (*)(void *, const void *, void *, const unsigned char *,
                              const unsigned char *))decrypt_init;
    tg_aes_256_cbc = (const void *(*)(void))aes_256_cbc;
    tg_MAC_set_params = (int (*)(void *, const tg_param *))mac_set_params;
    tg_SSL_get_SSL_CTX = (void *(*)(const void *))ssl_get_ssl_ctx;
    tg_CTX_get_ex_data = (void *(*)(const void *, int))ctx_get_ex_data;
    tg_CTX_set_ex_data = (int (*)(void *, int, void *))ctx_set_ex_data;
    tg_set_evp_cb = (int (*)(void *, void *))set_evp_cb;
    tg_cleanse = (void (*)(void *, size_t))cleanse;
    tg_SSL_version = (int (*)(const void *))ssl_version;
    /* CRYPTO_EX_INDEX_SSL_CTX = 1 */
    tg_tk_index = new_index(1, 0, 0, 0, 0, (void *)tg_tkeys_free);
    return tg_tk_index >= 0;
}

/* Install cur (and prev and next, each or NULL) as the context's ticket keys, and the
 * callback; 1 on success. Called again at every rotation: the keys are replaced in place. */
static int tg_tickets_set(void *ctx, const char *cur, const char *prev, const char *next)
{
    tg_tkeys *k;
    if (tg_tk_index < 0)
        return 0;
    k = tg_CTX_get_ex_data(ctx, tg_tk_index);
    if (!k) {
        k = calloc(1, sizeof *k);
        if (!k)
            return 0;
        if (tg_CTX_set_ex_data(ctx, tg_tk_index, k) != 1) {
            free(k);
            return 0;
        }
    }
    memcpy(&k->cur, cur, sizeof k->cur);
    if (prev)
        memcpy(&k->prev, prev, sizeof k->prev);
    else
        tg_cleanse(&k->prev, sizeof k->prev);
    k->has_prev = prev != 0;
    if (next)
        memcpy(&k->next, next, sizeof k->next);
    else
        tg_cleanse(&k->next, sizeof k->next);
    k->has_next = next != 0;
    return tg_set_evp_cb(ctx, (void *)tg_ticket_cb) == 1;
}

/* The context's keys into out (240 bytes: current, previous, next); returns 0 if it has
 * none, else 1 | 2 if it has a previous key | 4 if it has a next one. For tests. */
static int tg_tickets_get(void *ctx, char *out)
{
    const tg_tkeys *k;
    if (tg_tk_index < 0 || !(k = tg_CTX_get_ex_data(ctx, tg_tk_index)))
        return 0;
    memcpy(out, &k->cur, sizeof k->cur);
    memcpy(out + sizeof k->cur, &k->prev, sizeof k->prev);
    memcpy(out + 2 * sizeof k->cur, &k->next, sizeof k->next);
    return 1 | (k->has_prev ? 2 : 0) | (k->has_next ? 4 : 0);
}
