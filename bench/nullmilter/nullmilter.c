/* A no-op milter in C on Sendmail's libmilter: the cost of a milter round trip to Postfix itself.
 *
 * bench/milter_bench.py --c-milter runs it as a fourth instance's milter, beside the bare
 * Twisted one, so the figure "congvu / no milter" can be read against what any milter costs.
 * It negotiates what congvu's does (no CONNECT, HELO, RCPT, DATA or UNKNOWN events; no reply
 * to MAIL, headers, end of headers or body chunks), reads the body and accepts at its end.
 *
 *   cc -O2 -o nullmilter nullmilter.c -lmilter -pthread      (Debian package libmilter-dev)
 *   ./nullmilter unix:/path/to/socket
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libmilter/mfapi.h>

static sfsistat nm_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
                             unsigned long f3, unsigned long *pf0, unsigned long *pf1, unsigned long *pf2,
                             unsigned long *pf3) {
    unsigned long want = SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NORCPT | SMFIP_NOUNKNOWN | SMFIP_NODATA
                         | SMFIP_NR_MAIL | SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY;
    (void)ctx; (void)f2; (void)f3;
    *pf0 = f0 & SMFIF_ADDHDRS;
    *pf1 = f1 & want;
    *pf2 = 0;
    *pf3 = 0;
    return SMFIS_CONTINUE;
}

static sfsistat nm_mail(SMFICTX *ctx, char **argv) { (void)ctx; (void)argv; return SMFIS_CONTINUE; }
static sfsistat nm_header(SMFICTX *ctx, char *name, char *value) {
    (void)ctx; (void)name; (void)value; return SMFIS_CONTINUE;
}
static sfsistat nm_eoh(SMFICTX *ctx) { (void)ctx; return SMFIS_CONTINUE; }
static sfsistat nm_body(SMFICTX *ctx, unsigned char *chunk, size_t len) {
    (void)ctx; (void)chunk; (void)len; return SMFIS_CONTINUE;
}
static sfsistat nm_eom(SMFICTX *ctx) { (void)ctx; return SMFIS_ACCEPT; }

int main(int argc, char **argv) {
    struct smfiDesc desc;
    memset(&desc, 0, sizeof desc);
    desc.xxfi_name = "nullmilter";
    desc.xxfi_version = SMFI_VERSION;
    desc.xxfi_flags = SMFIF_ADDHDRS;
    desc.xxfi_envfrom = nm_mail;
    desc.xxfi_header = nm_header;
    desc.xxfi_eoh = nm_eoh;
    desc.xxfi_body = nm_body;
    desc.xxfi_eom = nm_eom;
    desc.xxfi_negotiate = nm_negotiate;
    if (argc != 2) {
        fprintf(stderr, "usage: %s unix:/path | inet:port@127.0.0.1\n", argv[0]);
        return 2;
    }
    if (strncmp(argv[1], "unix:", 5) == 0)
        unlink(argv[1] + 5);
    if (smfi_setconn(argv[1]) == MI_FAILURE || smfi_register(desc) == MI_FAILURE) {
        fprintf(stderr, "nullmilter: cannot listen on %s\n", argv[1]);
        return 1;
    }
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
