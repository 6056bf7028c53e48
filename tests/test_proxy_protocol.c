/* test_proxy_protocol.c — the PROXY header parser on its own (runtime/proxy_protocol.c):
 * v1 and v2 (IPv4, IPv6, unix, LOCAL, UNKNOWN), every prefix of a valid header
 * asking for more, the limits, bad signatures, versions, commands and fields.
 * Threading rule: single-threaded, no loop.
 */
#define _GNU_SOURCE
#include "test_util.h"

#include "proxy_protocol.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

/* Every strict prefix of a valid header needs more bytes; the whole parses. */
static void assert_prefixes_need_more(const void *hdr, size_t len)
{
    ioloop__proxy_header_t h;
    for (size_t i = 0; i < len; i++)
        assert_int_equal(ioloop__proxy_header_parse(hdr, i, &h), 0);
    assert_int_equal(ioloop__proxy_header_parse(hdr, len, &h), (ssize_t)len);
}

static void assert_in4(const struct sockaddr_storage *ss, const char *ip, int port)
{
    const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
    char text[INET_ADDRSTRLEN];
    assert_int_equal(in->sin_family, AF_INET);
    assert_string_equal(inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text)), ip);
    assert_int_equal(ntohs(in->sin_port), port);
}

static void assert_in6(const struct sockaddr_storage *ss, const char *ip, int port)
{
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
    char text[INET6_ADDRSTRLEN];
    assert_int_equal(in6->sin6_family, AF_INET6);
    assert_string_equal(inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text)), ip);
    assert_int_equal(ntohs(in6->sin6_port), port);
}

static ssize_t parse_str(const char *s, ioloop__proxy_header_t *h)
{
    return ioloop__proxy_header_parse(s, strlen(s), h);
}

static void test_v1_tcp4_with_payload(void **state)
{
    (void)state;
    const char *msg = "PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n\r\n";
    size_t hlen = strlen("PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n");
    ioloop__proxy_header_t h;
    assert_int_equal(parse_str(msg, &h), (ssize_t)hlen); /* the payload is not taken */
    assert_int_equal(h.version, 1);
    assert_false(h.local);
    assert_int_equal(h.src_len, sizeof(struct sockaddr_in));
    assert_in4(&h.src, "192.0.2.7", 56324);
    assert_in4(&h.dst, "198.51.100.1", 443);
    assert_prefixes_need_more(msg, hlen);
}

static void test_v1_tcp6_and_unknown(void **state)
{
    (void)state;
    ioloop__proxy_header_t h;
    const char *six = "PROXY TCP6 2001:db8::1 ::1 65535 0\r\n";
    assert_int_equal(parse_str(six, &h), (ssize_t)strlen(six));
    assert_in6(&h.src, "2001:db8::1", 65535);
    assert_in6(&h.dst, "::1", 0);
    assert_int_equal(h.src_len, sizeof(struct sockaddr_in6));
    assert_prefixes_need_more(six, strlen(six));

    const char *unknown = "PROXY UNKNOWN\r\n";
    assert_int_equal(parse_str(unknown, &h), (ssize_t)strlen(unknown));
    assert_true(h.local);
    assert_int_equal(h.src_len, 0);
    const char *unknown2 = "PROXY UNKNOWN ffff:f...f:ffff 1 2\r\n"; /* the rest is ignored */
    assert_int_equal(parse_str(unknown2, &h), (ssize_t)strlen(unknown2));
    assert_true(h.local);
}

static void test_v1_limits(void **state)
{
    (void)state;
    ioloop__proxy_header_t h;
    /* The longest legal line (the spec's worst case) is exactly 107 bytes. */
    const char *worst = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_int_equal(strlen(worst), 107);
    assert_int_equal(parse_str(worst, &h), 107);
    /* 107 bytes without a line end: too long, said as soon as 107 are there. */
    char longline[200];
    memcpy(longline, "PROXY UNKNOWN ", 14);
    memset(longline + 14, 'a', sizeof(longline) - 14);
    assert_int_equal(ioloop__proxy_header_parse(longline, 106, &h), 0);
    assert_int_equal(ioloop__proxy_header_parse(longline, 107, &h), -EMSGSIZE);
    assert_int_equal(ioloop__proxy_header_parse(longline, sizeof(longline), &h), -EMSGSIZE);
    /* A line end at byte 108 is too late. */
    longline[106] = '\r';
    longline[107] = '\n';
    assert_int_equal(ioloop__proxy_header_parse(longline, 108, &h), -EMSGSIZE);
}

static void test_v1_malformed(void **state)
{
    (void)state;
    static const char *bad[] = {
        "GET / HTTP/1.1\r\n\r\n",                 /* no signature at all */
        "PROXX TCP4 1.2.3.4 5.6.7.8 1 2\r\n",     /* bad signature */
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",     /* case matters */
        "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",     /* unknown protocol */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",       /* LF without CR */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n",    /* stray CR */
        "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",    /* two spaces */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",    /* trailing space */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",       /* a port missing */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",   /* a field too many */
        "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", /* port out of range */
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",    /* leading zero */
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",    /* sign */
        "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",   /* not an IPv4 address */
        "PROXY TCP4 ::1 5.6.7.8 1 2\r\n",         /* family mismatch */
        "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",         /* family mismatch */
        "PROXY TCP4 example.com 5.6.7.8 1 2\r\n", /* names are not addresses */
        "PROXY \r\n",                             /* empty */
        "PROXY TCP4 1.2.3.4\x01 5.6.7.8 1 2\r\n", /* control byte */
    };
    ioloop__proxy_header_t h = {.version = 42};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ssize_t r = parse_str(bad[i], &h);
        if (r != -EPROTO)
            fail_msg("\"%s\" gave %zd, not -EPROTO", bad[i], r);
    }
    assert_int_equal(h.version, 42); /* untouched on failure */
    /* A bad first byte is refused at once, with no need to wait for more. */
    assert_int_equal(ioloop__proxy_header_parse("G", 1, &h), -EPROTO);
    assert_int_equal(ioloop__proxy_header_parse("PROXZ", 5, &h), -EPROTO);
    /* A NUL inside a v1 line. */
    assert_int_equal(ioloop__proxy_header_parse("PROXY TCP4\0", 11, &h), -EPROTO);
}

static void test_v2_inet(void **state)
{
    (void)state;
    unsigned char body[12] = {192, 0, 2, 7, 198, 51, 100, 1, 0xdc, 0x04, 0x01, 0xbb};
    unsigned char buf[64];
    size_t n = tu_proxy_v2_header(buf, 0x21, 0x11, body, sizeof(body));
    memcpy(buf + n, "GET", 3); /* payload after it */
    ioloop__proxy_header_t h;
    assert_int_equal(ioloop__proxy_header_parse(buf, n + 3, &h), (ssize_t)n);
    assert_int_equal(h.version, 2);
    assert_false(h.local);
    assert_in4(&h.src, "192.0.2.7", 56324);
    assert_in4(&h.dst, "198.51.100.1", 443);
    assert_prefixes_need_more(buf, n);
}

static void test_v2_inet6_with_tlvs(void **state)
{
    (void)state;
    unsigned char body[36 + 3 + 5 + 3];
    struct in6_addr a, b;
    inet_pton(AF_INET6, "2001:db8::7", &a);
    inet_pton(AF_INET6, "2001:db8::1", &b);
    memcpy(body, &a, 16);
    memcpy(body + 16, &b, 16);
    body[32] = 0x30, body[33] = 0x39; /* 12345 */
    body[34] = 0x00, body[35] = 0x50; /* 80 */
    /* ALPN TLV "h2xyz", then an empty NOOP TLV */
    body[36] = 0x01, body[37] = 0, body[38] = 5;
    memcpy(body + 39, "h2xyz", 5);
    body[44] = 0x04, body[45] = 0, body[46] = 0;
    unsigned char buf[128];
    size_t n = tu_proxy_v2_header(buf, 0x21, 0x21, body, sizeof(body));
    ioloop__proxy_header_t h;
    assert_int_equal(ioloop__proxy_header_parse(buf, n, &h), (ssize_t)n);
    assert_in6(&h.src, "2001:db8::7", 12345);
    assert_in6(&h.dst, "2001:db8::1", 80);
    assert_prefixes_need_more(buf, n);
    /* A TLV whose length runs past the block. */
    body[46] = 1;
    n = tu_proxy_v2_header(buf, 0x21, 0x21, body, sizeof(body));
    assert_int_equal(ioloop__proxy_header_parse(buf, n, &h), -EPROTO);
    /* A truncated TLV header (2 bytes left). */
    n = tu_proxy_v2_header(buf, 0x21, 0x21, body, 36 + 2);
    assert_int_equal(ioloop__proxy_header_parse(buf, n, &h), -EPROTO);
}

static void test_v2_unix_local_unspec(void **state)
{
    (void)state;
    unsigned char body[216] = {0};
    strcpy((char *)body, "/run/client.sock");
    strcpy((char *)body + 108, "/run/server.sock");
    unsigned char buf[256];
    ioloop__proxy_header_t h;
    size_t n = tu_proxy_v2_header(buf, 0x21, 0x31, body, sizeof(body));
    assert_int_equal(ioloop__proxy_header_parse(buf, n, &h), (ssize_t)n);
    assert_false(h.local);
    const struct sockaddr_un *un = (const struct sockaddr_un *)&h.src;
    assert_int_equal(un->sun_family, AF_UNIX);
    assert_string_equal(un->sun_path, "/run/client.sock");
    assert_int_equal(h.src_len, offsetof(struct sockaddr_un, sun_path) + strlen("/run/client.sock"));

    /* LOCAL (a health check from the proxy itself): no address; any block skipped. */
    n = tu_proxy_v2_header(buf, 0x20, 0x00, NULL, 0);
    assert_int_equal(ioloop__proxy_header_parse(buf, n, &h), 16);
    assert_true(h.local);
    assert_int_equal(h.version, 2);
    assert_int_equal(h.src_len, 0);
    n = tu_proxy_v2_header(buf, 0x20, 0x31, body, sizeof(body)); /* LOCAL over a unix socket, as HAProxy sends it */
    assert_int_equal(ioloop__proxy_header_parse(buf, n, &h), (ssize_t)n);
    assert_true(h.local);
    /* PROXY with AF_UNSPEC: keep the real peer too. */
    n = tu_proxy_v2_header(buf, 0x21, 0x00, NULL, 0);
    assert_int_equal(ioloop__proxy_header_parse(buf, n, &h), 16);
    assert_true(h.local);
}

/* A v2 header with an all-zero body of blen bytes is refused as malformed. */
static void assert_v2_malformed(unsigned ver_cmd, unsigned fam, size_t blen)
{
    unsigned char body[256] = {0}, buf[16 + sizeof(body)];
    ioloop__proxy_header_t h;
    assert_true(blen <= sizeof(body));
    size_t n = tu_proxy_v2_header(buf, ver_cmd, fam, body, blen);
    assert_int_equal(ioloop__proxy_header_parse(buf, n, &h), -EPROTO);
}

static void test_v2_malformed_and_limits(void **state)
{
    (void)state;
    unsigned char body[1100] = {0};
    unsigned char buf[1200];
    ioloop__proxy_header_t h;
    /* bad version (1 and 3), bad command (2) */
    assert_v2_malformed(0x11, 0x11, 12);
    assert_v2_malformed(0x31, 0x11, 12);
    assert_v2_malformed(0x22, 0x11, 12);
    /* bad family (4), datagram or unspecified transport with an address */
    assert_v2_malformed(0x21, 0x41, 12);
    assert_v2_malformed(0x21, 0x12, 12);
    assert_v2_malformed(0x21, 0x10, 12);
    /* address block shorter than the family needs */
    assert_v2_malformed(0x21, 0x11, 11);
    assert_v2_malformed(0x21, 0x21, 35);
    assert_v2_malformed(0x21, 0x31, 215);
    /* the limit: 1024 bytes after the preamble pass (one NOOP TLV filling them),
     * 1025 are refused from the preamble alone */
    body[12] = 0x04, body[13] = (1024 - 15) >> 8, body[14] = (1024 - 15) & 0xff;
    size_t n = tu_proxy_v2_header(buf, 0x21, 0x11, body, 1024);
    assert_int_equal(n, IOLOOP__PROXY_V2_MAX);
    assert_int_equal(ioloop__proxy_header_parse(buf, n, &h), (ssize_t)n);
    n = tu_proxy_v2_header(buf, 0x21, 0x11, body, 1025);
    assert_int_equal(ioloop__proxy_header_parse(buf, 16, &h), -EMSGSIZE);
    /* bad signature: every byte of it matters, and is refused at once */
    for (size_t i = 0; i < 12; i++) {
        n = tu_proxy_v2_header(buf, 0x21, 0x11, body, 12);
        buf[i] ^= 0x20;
        assert_int_equal(ioloop__proxy_header_parse(buf, i + 1, &h), -EPROTO);
        assert_int_equal(ioloop__proxy_header_parse(buf, n, &h), -EPROTO);
    }
    /* a TLS ClientHello or an HTTP request is no header */
    static const unsigned char hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01};
    assert_int_equal(ioloop__proxy_header_parse(hello, sizeof(hello), &h), -EPROTO);
    assert_int_equal(ioloop__proxy_header_parse("", 0, &h), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_tcp4_with_payload),
        cmocka_unit_test(test_v1_tcp6_and_unknown),
        cmocka_unit_test(test_v1_limits),
        cmocka_unit_test(test_v1_malformed),
        cmocka_unit_test(test_v2_inet),
        cmocka_unit_test(test_v2_inet6_with_tlvs),
        cmocka_unit_test(test_v2_unix_local_unspec),
        cmocka_unit_test(test_v2_malformed_and_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
