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
 * only allocations are OpenSSL's, for the BIOs of an in-place read.
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
