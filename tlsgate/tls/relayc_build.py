"""cffi build script of ``tlsgate.tls._relayc``, the optional C accelerator of the TLS relay.

Run by ``setup.py`` at install time (``cffi_modules``). If there is no C compiler or no Python
headers the build is skipped and :mod:`tlsgate.tls.engine` uses its pure-Python loops; see
``tlsgate/tls/relay_accel.c`` for what the C code does and why it exists.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI  # type: ignore[import-untyped]

ffibuilder = FFI()
ffibuilder.cdef("""
int tg_init(void *bio_write, void *bio_read, void *ssl_read, void *ssl_write,
            void *ssl_get_error, int want_read, int zero_return);
int tg_init_direct(void *bio_new_mem_buf, void *bio_set_mem_eof_return, void *ssl_set_bio,
                   void *bio_new, void *bio_get_mem_data, void *mem_method, int direct_min);
int tg_decrypt_send(void *ssl, void *rbio, void *wbio, char *in, int n, char *out, int cap,
                    char *aux, int auxcap, int fd, int *res, void **newrbio);
int tg_encrypt_send(void *ssl, void *wbio, char *in, int n, char *out, int cap, int fd,
                    int *res);
int tg_init_session(void *ssl_new, void *ssl_free, void *set_accept_state, void *set_mode,
                    void *bio_free);
void *tg_new_session(void *ctx, long mode, void **out);
int tg_recycle_bios(void *ssl, void *rbio, void *wbio, void **out);
int tg_tickets_init(void *rand_bytes, void *encrypt_init, void *decrypt_init,
                    void *aes_256_cbc, void *mac_set_params, void *ssl_get_ssl_ctx,
                    void *ctx_get_ex_data, void *ctx_set_ex_data, void *set_evp_cb,
                    void *cleanse, void *get_ex_new_index, void *ssl_version);
int tg_tickets_set(void *ctx, const char *cur, const char *prev, const char *next);
int tg_tickets_get(void *ctx, char *out);
""")
ffibuilder.set_source(
    "tlsgate.tls._relayc",
    (Path(__file__).with_name("relay_accel.c")).read_text(),
    extra_compile_args=["-O2"],
)

if __name__ == "__main__":  # python tlsgate/tls/relayc_build.py: build in place, for development
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # cffi's generated C stays out of the tree
        so = ffibuilder.compile(tmpdir=tmp, verbose=False)
        dest = Path(__file__).with_name(Path(so).name)
        Path(so).replace(dest)
        print(dest)
