/* Sequential FastCGI load loop in C, so the client costs little next to the
 * worker being measured: one worker's own speed, without nginx (bench/run
 * measures through nginx).
 *
 *   cc -O2 -o /tmp/fcgi_bench bench/fcgi_bench.c
 *   /tmp/fcgi_bench SOCKET SCRIPT_FILENAME [N] [keep]
 *
 * Sends nginx-like params; without "keep" each request uses a new
 * connection (nginx's default), with it all share one (FCGI_KEEP_CONN). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

/* The FastCGI record types and role it uses (the specification's numbers). */
enum { BEGIN_REQUEST = 1, END_REQUEST = 3, PARAMS = 4, STDIN = 5 };
enum { RESPONDER = 1, KEEP_CONN = 1, HEADER_LEN = 8 };

static unsigned char req[8192];
static size_t reqlen;

static void rec(int type, const unsigned char *c, size_t n) {
    size_t pad = (8 - n % 8) % 8;
    unsigned char h[HEADER_LEN] = {1, (unsigned char)type, 0, 1, (unsigned char)(n >> 8),
                                   (unsigned char)n, (unsigned char)pad, 0};
    memcpy(req + reqlen, h, HEADER_LEN); reqlen += HEADER_LEN;
    if (n) { memcpy(req + reqlen, c, n); reqlen += n; }
    memset(req + reqlen, 0, pad); reqlen += pad;
}

static size_t pair(unsigned char *p, const char *k, const char *v) {
    size_t kl = strlen(k), vl = strlen(v), o = 0;  /* all < 128 here */
    p[o++] = (unsigned char)kl; p[o++] = (unsigned char)vl;
    memcpy(p + o, k, kl); o += kl; memcpy(p + o, v, vl); o += vl;
    return o;
}

static int connect_to(const char *path) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {0};
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); exit(1); }
    return s;
}

/* Read until END_REQUEST; keeps leftover bytes in buf. */
static unsigned char buf[1 << 20];
static size_t blen;
static void read_response(int s) {
    for (;;) {
        while (blen >= HEADER_LEN) {
            size_t clen = (buf[4] << 8) | buf[5], total = HEADER_LEN + clen + buf[6];
            if (blen < total) break;
            int type = buf[1];
            memmove(buf, buf + total, blen - total); blen -= total;
            if (type == END_REQUEST) return;
        }
        ssize_t r = read(s, buf + blen, sizeof buf - blen);
        if (r <= 0) { fprintf(stderr, "connection closed early\n"); exit(1); }
        blen += (size_t)r;
    }
}

static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s SOCKET SCRIPT [N] [keep]\n", argv[0]); return 2; }
    const char *script = argv[2];
    int n = argc > 3 ? atoi(argv[3]) : 20000, keep = argc > 4;
    unsigned char begin[8] = {0, RESPONDER, keep ? KEEP_CONN : 0, 0, 0, 0, 0, 0}, p[4096];
    const char *kv[] = {"QUERY_STRING", "", "REQUEST_METHOD", "GET", "CONTENT_TYPE", "",
        "CONTENT_LENGTH", "", "SCRIPT_NAME", "/hello.jl", "REQUEST_URI", "/hello.jl",
        "DOCUMENT_URI", "/hello.jl", "DOCUMENT_ROOT", "/var/www", "SERVER_PROTOCOL", "HTTP/1.1",
        "REQUEST_SCHEME", "http", "GATEWAY_INTERFACE", "CGI/1.1", "SERVER_SOFTWARE", "nginx/1.22.1",
        "REMOTE_ADDR", "127.0.0.1", "REMOTE_PORT", "51234", "SERVER_ADDR", "127.0.0.1",
        "SERVER_PORT", "80", "SERVER_NAME", "localhost", "REDIRECT_STATUS", "200",
        "SCRIPT_FILENAME", script, "HTTP_HOST", "localhost", "HTTP_USER_AGENT", "wrk",
        "HTTP_ACCEPT", "*/*"};
    size_t pl = 0;
    for (size_t i = 0; i < sizeof kv / sizeof *kv; i += 2) pl += pair(p + pl, kv[i], kv[i + 1]);
    rec(BEGIN_REQUEST, begin, 8); rec(PARAMS, p, pl); rec(PARAMS, NULL, 0); rec(STDIN, NULL, 0);

    double *lat = malloc(sizeof(double) * n);
    int s = -1;
    for (int pass = 0; pass < 2; pass++) {           /* pass 0 warms up */
        int m = pass ? n : 500;
        double t0 = now();
        for (int i = 0; i < m; i++) {
            double t = now();
            if (s < 0) s = connect_to(argv[1]);
            if (write(s, req, reqlen) != (ssize_t)reqlen) { perror("write"); return 1; }
            read_response(s);
            if (!keep) { close(s); s = -1; blen = 0; }
            if (pass) lat[i] = now() - t;
        }
        if (pass) {
            double total = now() - t0;
            int cmp(const void *a, const void *b) {
                double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
            qsort(lat, n, sizeof *lat, cmp);
            printf("%.0f req/s  p50 %.0f us  p99 %.0f us  (%d requests, %s)\n", n / total,
                   lat[n / 2] * 1e6, lat[(int)(n * 0.99)] * 1e6, n,
                   keep ? "keep-alive" : "new connection each");
        }
    }
    return 0;
}
