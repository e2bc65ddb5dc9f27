/*
 * graph.c - bmplan-graph/1 files (../shared/spec/graph-format.md): reader
 * and writer, YAML and JSON.
 *
 * Reading happens in two steps. First the text becomes a small document
 * tree ("doc": scalars, lists, mappings, each with its line) -- from
 * libyaml's event stream or from a jansson document -- so that both
 * syntaxes share one strict checker and give the same messages with
 * file:line. Then one pass over the doc builds the module tree; `repeat`
 * re-walks the template's doc nodes, it never re-parses text.
 *
 * Hostile input is bounded at the first step: no anchors or aliases (no
 * billion laughs), nesting at most BM_GRAPH_MAX_DEPTH (checked while
 * streaming, so a deep file fails before it is read in full), at most
 * BM_GRAPH_MAX_NODES values; and before anything is built, the size of the
 * expanded tree is computed and capped at BM_GRAPH_MAX_ENTRIES.
 *
 * The writer prints both syntaxes itself rather than through libyaml's
 * emitter or json_dumps: the layout (block modules, one-line leaves and
 * tensors), the quoting and the float spelling stay fixed, so output is
 * byte-for-byte reproducible across library versions.
 */
#include "graph.h"
#include "sbuf.h"
#include "strtab.h"

#include <jansson.h>
#include <yaml.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define FORMAT_NAME "bmplan-graph/1"
#define NO_NODE UINT32_MAX

/* ------------------------------------------------------------------------
 * The document tree
 * ------------------------------------------------------------------------ */

enum node_type { T_STR, T_INT, T_REAL, T_BOOL, T_NULL, T_SEQ, T_MAP };

static const char *const type_names[] = {
    [T_STR] = "a string", [T_INT] = "an integer", [T_REAL] = "a number",
    [T_BOOL] = "a boolean", [T_NULL] = "null", [T_SEQ] = "a list",
    [T_MAP] = "a mapping",
};

typedef struct gnode {
    uint8_t type;
    uint32_t line; /* 1-based; 0 when unknown */
    /* scalars: offset of the NUL-terminated text in doc.text, and its
     * length; lists and mappings: first entry in doc.kids, and the number
     * of items (of key/value pairs for mappings) */
    uint32_t a, b;
} gnode;

struct doc {
    const char *source;
    bm_error *err;
    gnode *nodes;
    size_t n_nodes, cap_nodes;
    uint32_t *kids; /* mapping entries are key, value, key, value, ... */
    size_t n_kids, cap_kids;
    uint32_t *pend; /* entries of the containers still open */
    size_t n_pend, cap_pend;
    char *text;
    size_t n_text, cap_text;
    uint32_t root;
};

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t nc = *cap ? *cap : 256;
    while (nc < need) {
        if (nc > SIZE_MAX / 2 / elem)
            return false;
        nc *= 2;
    }
    void *q = realloc(*p, nc * elem);
    if (!q)
        return false;
    *p = q;
    *cap = nc;
    return true;
}

static bm_status doc_nomem(struct doc *d)
{
    return bm_fail_at(d->err, BM_E_NOMEM, d->source, 0, NULL, -1,
                      "out of memory reading the graph");
}

static bm_status doc_fail(struct doc *d, uint32_t line, bm_status code,
                          const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static bm_status doc_fail(struct doc *d, uint32_t line, bm_status code,
                          const char *fmt, ...)
{
    char what[BM_ERROR_MSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return bm_fail_at(d->err, code, d->source, line, NULL, -1, "%s", what);
}

static void doc_free(struct doc *d)
{
    free(d->nodes);
    free(d->kids);
    free(d->pend);
    free(d->text);
}

static bm_status doc_node(struct doc *d, uint8_t type, uint32_t line,
                          uint32_t *out)
{
    if (d->n_nodes >= BM_GRAPH_MAX_NODES)
        return doc_fail(d, line, BM_E_FORMAT,
                        "too many values (more than %u) in one graph file",
                        BM_GRAPH_MAX_NODES);
    if (!grow((void **)&d->nodes, &d->cap_nodes, d->n_nodes + 1, sizeof *d->nodes))
        return doc_nomem(d);
    gnode *n = &d->nodes[d->n_nodes];
    n->type = type;
    n->line = line;
    n->a = n->b = 0;
    *out = (uint32_t)d->n_nodes++;
    return BM_OK;
}

static bm_status doc_scalar(struct doc *d, uint8_t type, uint32_t line,
                            const char *s, size_t len, uint32_t *out)
{
    if (len >= UINT32_MAX || d->n_text + len + 1 > UINT32_MAX)
        return doc_fail(d, line, BM_E_FORMAT, "graph file holds too much text");
    bm_status st = doc_node(d, type, line, out);
    if (st)
        return st;
    if (!grow((void **)&d->text, &d->cap_text, d->n_text + len + 1, 1))
        return doc_nomem(d);
    memcpy(d->text + d->n_text, s, len);
    d->text[d->n_text + len] = 0;
    d->nodes[*out].a = (uint32_t)d->n_text;
    d->nodes[*out].b = (uint32_t)len;
    d->n_text += len + 1;
    return BM_OK;
}

static bm_status doc_push(struct doc *d, uint32_t node)
{
    if (!grow((void **)&d->pend, &d->cap_pend, d->n_pend + 1, sizeof *d->pend))
        return doc_nomem(d);
    d->pend[d->n_pend++] = node;
    return BM_OK;
}

static inline const char *ntext(const struct doc *d, uint32_t n)
{
    return d->text + d->nodes[n].a;
}

static inline uint32_t map_key(const struct doc *d, uint32_t m, uint32_t i)
{
    return d->kids[d->nodes[m].a + 2 * i];
}

static inline uint32_t map_val(const struct doc *d, uint32_t m, uint32_t i)
{
    return d->kids[d->nodes[m].a + 2 * i + 1];
}

static inline uint32_t seq_item(const struct doc *d, uint32_t s, uint32_t i)
{
    return d->kids[d->nodes[s].a + i];
}

static bool same_key(const struct doc *d, uint32_t x, uint32_t y)
{
    return d->nodes[x].b == d->nodes[y].b &&
           memcmp(ntext(d, x), ntext(d, y), d->nodes[x].b) == 0;
}

/* Close the container `node` whose entries are pend[start..]: check the
 * keys of a mapping (scalars, no duplicates) and move the entries to kids. */
static bm_status doc_close(struct doc *d, uint32_t node, size_t start)
{
    size_t cnt = d->n_pend - start;
    const uint32_t *e = cnt ? d->pend + start : NULL;
    gnode *n = &d->nodes[node];
    if (n->type == T_MAP) {
        size_t pairs = cnt / 2;
        for (size_t i = 0; i < pairs; i++) {
            uint8_t kt = d->nodes[e[2 * i]].type;
            if (kt == T_SEQ || kt == T_MAP)
                return doc_fail(d, d->nodes[e[2 * i]].line, BM_E_FORMAT,
                                "mapping keys must be scalars, not %s",
                                type_names[kt]);
        }
        if (pairs <= 8) {
            for (size_t i = 1; i < pairs; i++)
                for (size_t j = 0; j < i; j++)
                    if (same_key(d, e[2 * i], e[2 * j]))
                        return doc_fail(d, d->nodes[e[2 * i]].line, BM_E_FORMAT,
                                        "duplicate key '%.200s'",
                                        ntext(d, e[2 * i]));
        } else {
            bm_strtab seen = {0};
            for (size_t i = 0; i < pairs; i++) {
                uint32_t k = e[2 * i];
                int rc = bm_strtab_put(&seen, ntext(d, k), d->nodes[k].b, 0);
                if (rc <= 0) {
                    bm_strtab_free(&seen);
                    return rc < 0 ? doc_nomem(d)
                                  : doc_fail(d, d->nodes[k].line, BM_E_FORMAT,
                                             "duplicate key '%.200s'", ntext(d, k));
                }
            }
            bm_strtab_free(&seen);
        }
    }
    if (!grow((void **)&d->kids, &d->cap_kids, d->n_kids + cnt, sizeof *d->kids))
        return doc_nomem(d);
    if (cnt)
        memcpy(d->kids + d->n_kids, e, cnt * sizeof *e);
    n = &d->nodes[node];
    n->a = (uint32_t)d->n_kids;
    n->b = (uint32_t)(n->type == T_MAP ? cnt / 2 : cnt);
    d->n_kids += cnt;
    d->n_pend = start;
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * Scalars: YAML 1.2 core schema resolution of plain scalars
 * ------------------------------------------------------------------------ */

static bool is_word(const char *s, size_t n, const char *w)
{
    return strlen(w) == n && memcmp(s, w, n) == 0;
}

static bool is_digits(const char *s, size_t n, int base)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = base == 16 ? ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
                                (c >= 'A' && c <= 'F'))
                             : (c >= '0' && c < '0' + base);
        if (!ok)
            return false;
    }
    return true;
}

static bool is_int_text(const char *s, size_t n)
{
    if (n > 2 && s[0] == '0' && s[1] == 'o')
        return is_digits(s + 2, n - 2, 8);
    if (n > 2 && s[0] == '0' && s[1] == 'x')
        return is_digits(s + 2, n - 2, 16);
    if (n > 0 && (s[0] == '-' || s[0] == '+'))
        s++, n--;
    return is_digits(s, n, 10);
}

static bool is_float_text(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        i++;
    const char *r = s + i;
    size_t rn = n - i;
    if (is_word(r, rn, ".inf") || is_word(r, rn, ".Inf") || is_word(r, rn, ".INF"))
        return true;
    if (is_word(s, n, ".nan") || is_word(s, n, ".NaN") || is_word(s, n, ".NAN"))
        return true;
    size_t digits = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++, digits++;
    if (i < n && s[i] == '.') {
        i++;
        size_t frac = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, frac++;
        /* "1." is a float, "." is not; ".5" needs its digits */
        if (digits == 0 && frac == 0)
            return false;
    } else if (digits == 0) {
        return false;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '-' || s[i] == '+'))
            i++;
        size_t ed = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, ed++;
        if (ed == 0)
            return false;
    }
    return i == n;
}

static uint8_t resolve_plain(const char *s, size_t n)
{
    if (n == 0 || is_word(s, n, "~") || is_word(s, n, "null") ||
        is_word(s, n, "Null") || is_word(s, n, "NULL"))
        return T_NULL;
    if (is_word(s, n, "true") || is_word(s, n, "True") || is_word(s, n, "TRUE") ||
        is_word(s, n, "false") || is_word(s, n, "False") || is_word(s, n, "FALSE"))
        return T_BOOL;
    if (is_int_text(s, n))
        return T_INT;
    if (is_float_text(s, n))
        return T_REAL;
    return T_STR;
}

/* The value of an integer scalar (decimal with sign, 0o, 0x); false when it
 * does not fit in int64. */
static bool text_int(const char *s, int64_t *v)
{
    int base = 10;
    bool neg = false;
    if (s[0] == '0' && (s[1] == 'o' || s[1] == 'x')) {
        base = s[1] == 'o' ? 8 : 16;
        s += 2;
    } else if (s[0] == '-' || s[0] == '+') {
        neg = s[0] == '-';
        s++;
    }
    uint64_t acc = 0;
    for (; *s; s++) {
        int dv = *s >= 'a' ? *s - 'a' + 10 : *s >= 'A' ? *s - 'A' + 10 : *s - '0';
        if (__builtin_mul_overflow(acc, (uint64_t)base, &acc) ||
            __builtin_add_overflow(acc, (uint64_t)dv, &acc))
            return false;
    }
    if (neg) {
        if (acc > (uint64_t)INT64_MAX + 1)
            return false;
        *v = acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc;
    } else {
        if (acc > (uint64_t)INT64_MAX)
            return false;
        *v = (int64_t)acc;
    }
    return true;
}

static double text_real(const char *s)
{
    const char *r = s + (s[0] == '-' || s[0] == '+');
    if (r[0] == '.' && (r[1] == 'i' || r[1] == 'I'))
        return s[0] == '-' ? -INFINITY : INFINITY;
    if (r[0] == '.' && (r[1] == 'n' || r[1] == 'N'))
        return NAN;
    return strtod(s, NULL);
}

/* Text that reads back as the same double, written as Python's repr()
 * writes it (shortest digits; plain notation for exponents -4..15), with
 * ".0" kept so YAML and JSON readers see a float: "10000.0", "1.0e-05". */
static void format_real(double v, char *buf, size_t cap)
{
    char tmp[48];
    if (!isfinite(v)) {
        snprintf(buf, cap, "%s", isnan(v) ? ".nan" : v < 0 ? "-.inf" : ".inf");
        return;
    }
    int prec = 1;
    for (; prec < 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    snprintf(tmp, sizeof tmp, "%.*e", prec - 1, v);
    int exp10 = atoi(strchr(tmp, 'e') + 1);
    if (exp10 >= -4 && exp10 < 16) {
        int decimals = prec - 1 - exp10;
        snprintf(tmp, sizeof tmp, "%.*f", decimals > 0 ? decimals : 0, v);
        snprintf(buf, cap, strchr(tmp, '.') ? "%s" : "%s.0", tmp);
        return;
    }
    char *e = strchr(tmp, 'e');
    if (memchr(tmp, '.', (size_t)(e - tmp)))
        snprintf(buf, cap, "%s", tmp);
    else
        snprintf(buf, cap, "%.*s.0%s", (int)(e - tmp), tmp, e);
}

/* ------------------------------------------------------------------------
 * YAML -> doc
 * ------------------------------------------------------------------------ */

static uint32_t mark_line(size_t line0)
{
    return line0 >= UINT32_MAX - 1 ? UINT32_MAX - 1 : (uint32_t)line0 + 1;
}

static bm_status yaml_syntax_error(struct doc *d, const yaml_parser_t *p,
                                   const char *data, size_t len)
{
    const char *problem = p->problem ? p->problem : "unknown problem";
    switch (p->error) {
    case YAML_MEMORY_ERROR:
        return doc_nomem(d);
    case YAML_READER_ERROR: {
        size_t off = p->problem_offset < len ? p->problem_offset : len;
        uint32_t line = 1;
        for (size_t i = 0; i < off; i++)
            line += data[i] == '\n';
        return doc_fail(d, line, BM_E_FORMAT,
                        "invalid text at byte %zu: %s (the file must be UTF-8)",
                        off, problem);
    }
    default:
        if (p->context)
            return doc_fail(d, mark_line(p->problem_mark.line), BM_E_FORMAT,
                            "YAML syntax error: %s (%s started at line %zu)",
                            problem, p->context, p->context_mark.line + 1);
        return doc_fail(d, mark_line(p->problem_mark.line), BM_E_FORMAT,
                        "YAML syntax error: %s", problem);
    }
}

static bm_status yaml_check_props(struct doc *d, uint32_t line,
                                  const yaml_char_t *anchor,
                                  const yaml_char_t *tag, bool scalar,
                                  bool *is_str)
{
    /* anchors are only useful with aliases, which would let a small file
     * expand into a huge one; neither is needed to describe a model */
    if (anchor)
        return doc_fail(d, line, BM_E_FORMAT,
                        "anchors and aliases are not allowed (anchor '&%.100s')",
                        (const char *)anchor);
    if (!tag)
        return BM_OK;
    if (scalar && (strcmp((const char *)tag, "!") == 0 ||
                   strcmp((const char *)tag, "tag:yaml.org,2002:str") == 0)) {
        *is_str = true;
        return BM_OK;
    }
    return doc_fail(d, line, BM_E_FORMAT, "YAML tag '%.100s' is not supported",
                    (const char *)tag);
}

struct frame {
    uint32_t node;
    size_t start;
};

static bm_status yaml_event(struct doc *d, const yaml_event_t *ev,
                            struct frame *frames, int *nf, int *ndocs, bool *done)
{
    uint32_t line = mark_line(ev->start_mark.line);
    bm_status st = BM_OK;
    uint32_t node;
    switch (ev->type) {
    case YAML_STREAM_START_EVENT:
    case YAML_DOCUMENT_END_EVENT:
    case YAML_NO_EVENT:
        return BM_OK;
    case YAML_STREAM_END_EVENT:
        *done = true;
        return BM_OK;
    case YAML_DOCUMENT_START_EVENT:
        if (++*ndocs > 1)
            return doc_fail(d, line, BM_E_FORMAT,
                            "more than one YAML document in a graph file");
        return BM_OK;
    case YAML_ALIAS_EVENT:
        return doc_fail(d, line, BM_E_FORMAT,
                        "anchors and aliases are not allowed (alias '*%.100s')",
                        (const char *)ev->data.alias.anchor);
    case YAML_SCALAR_EVENT: {
        bool is_str = false;
        if ((st = yaml_check_props(d, line, ev->data.scalar.anchor,
                                   ev->data.scalar.tag, true, &is_str)))
            return st;
        const char *v = (const char *)ev->data.scalar.value;
        size_t n = ev->data.scalar.length;
        if (memchr(v, 0, n))
            return doc_fail(d, line, BM_E_FORMAT, "NUL character in a string");
        uint8_t type = T_STR;
        if (!is_str && ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
            type = resolve_plain(v, n);
        if ((st = doc_scalar(d, type, line, v, n, &node)))
            return st;
        break;
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        bool seq = ev->type == YAML_SEQUENCE_START_EVENT;
        bool dummy;
        if ((st = yaml_check_props(d, line,
                                   seq ? ev->data.sequence_start.anchor
                                       : ev->data.mapping_start.anchor,
                                   seq ? ev->data.sequence_start.tag
                                       : ev->data.mapping_start.tag,
                                   false, &dummy)))
            return st;
        if (*nf >= BM_GRAPH_MAX_DEPTH)
            return doc_fail(d, line, BM_E_FORMAT,
                            "nesting deeper than %d levels", BM_GRAPH_MAX_DEPTH);
        if ((st = doc_node(d, seq ? T_SEQ : T_MAP, line, &node)))
            return st;
        if (*nf > 0 && (st = doc_push(d, node)))
            return st;
        if (*nf == 0)
            d->root = node;
        frames[*nf].node = node;
        frames[*nf].start = d->n_pend;
        ++*nf;
        return BM_OK;
    }
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        if (*nf <= 0)
            return doc_fail(d, line, BM_E_INTERNAL, "unbalanced YAML events");
        --*nf;
        return doc_close(d, frames[*nf].node, frames[*nf].start);
    }
    /* a scalar: the document itself, or an entry of the open container */
    if (*nf == 0) {
        d->root = node;
        return BM_OK;
    }
    return doc_push(d, node);
}

static bm_status yaml_build(struct doc *d, const char *data, size_t len)
{
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p))
        return doc_nomem(d);
    yaml_parser_set_input_string(&p, (const unsigned char *)data, len);
    yaml_parser_set_encoding(&p, YAML_UTF8_ENCODING);
    struct frame frames[BM_GRAPH_MAX_DEPTH];
    int nf = 0, ndocs = 0;
    bool done = false;
    bm_status st = BM_OK;
    d->root = NO_NODE;
    while (!done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            st = yaml_syntax_error(d, &p, data, len);
            break;
        }
        st = yaml_event(d, &ev, frames, &nf, &ndocs, &done);
        yaml_event_delete(&ev);
        if (st)
            break;
    }
    yaml_parser_delete(&p);
    if (!st && d->root == NO_NODE)
        st = doc_fail(d, 0, BM_E_FORMAT, "empty graph file");
    return st;
}

/* ------------------------------------------------------------------------
 * JSON -> doc
 *
 * jansson parses and validates; its objects keep the document's key order.
 * To give lines in messages, a cursor walks the (already valid) text in
 * step with the jansson values and notes where each one starts.
 * ------------------------------------------------------------------------ */

struct jcur {
    const char *p, *end;
    uint32_t line;
    bool lost; /* text and values out of step: lines unknown from here */
};

static void jc_ws(struct jcur *c)
{
    while (c->p < c->end &&
           (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) {
        if (*c->p == '\n' && c->line < UINT32_MAX - 1)
            c->line++;
        c->p++;
    }
}

static uint32_t jc_line(struct jcur *c)
{
    jc_ws(c);
    return c->lost ? 0 : c->line;
}

static void jc_expect(struct jcur *c, char ch)
{
    jc_ws(c);
    if (c->p < c->end && *c->p == ch)
        c->p++;
    else
        c->lost = true;
}

static void jc_skip_string(struct jcur *c)
{
    jc_ws(c);
    if (c->p >= c->end || *c->p != '"') {
        c->lost = true;
        return;
    }
    c->p++;
    while (c->p < c->end && *c->p != '"')
        c->p += (*c->p == '\\' && c->p + 1 < c->end) ? 2 : 1;
    if (c->p < c->end)
        c->p++;
}

static void jc_skip_atom(struct jcur *c)
{
    jc_ws(c);
    while (c->p < c->end && *c->p != ',' && *c->p != ']' && *c->p != '}' &&
           *c->p != ' ' && *c->p != '\t' && *c->p != '\n' && *c->p != '\r')
        c->p++;
}

static void jc_skip_comma(struct jcur *c)
{
    jc_ws(c);
    if (c->p < c->end && *c->p == ',')
        c->p++;
}

static bm_status json_conv(struct doc *d, struct jcur *c, json_t *v, int depth,
                           uint32_t *out)
{
    uint32_t line = jc_line(c);
    if (depth > BM_GRAPH_MAX_DEPTH)
        return doc_fail(d, line, BM_E_FORMAT, "nesting deeper than %d levels",
                        BM_GRAPH_MAX_DEPTH);
    bm_status st;
    char buf[64];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        if ((st = doc_node(d, T_MAP, line, out)))
            return st;
        size_t start = d->n_pend;
        jc_expect(c, '{');
        for (void *it = json_object_iter(v); it; it = json_object_iter_next(v, it)) {
            uint32_t k, x;
            uint32_t kline = jc_line(c);
            jc_skip_string(c);
            jc_expect(c, ':');
            if ((st = doc_scalar(d, T_STR, kline, json_object_iter_key(it),
                                 json_object_iter_key_len(it), &k)) ||
                (st = doc_push(d, k)) ||
                (st = json_conv(d, c, json_object_iter_value(it), depth + 1, &x)) ||
                (st = doc_push(d, x)))
                return st;
            jc_skip_comma(c);
        }
        jc_expect(c, '}');
        return doc_close(d, *out, start);
    }
    case JSON_ARRAY: {
        if ((st = doc_node(d, T_SEQ, line, out)))
            return st;
        size_t start = d->n_pend;
        jc_expect(c, '[');
        for (size_t i = 0; i < json_array_size(v); i++) {
            uint32_t x;
            if ((st = json_conv(d, c, json_array_get(v, i), depth + 1, &x)) ||
                (st = doc_push(d, x)))
                return st;
            jc_skip_comma(c);
        }
        jc_expect(c, ']');
        return doc_close(d, *out, start);
    }
    case JSON_STRING:
        jc_skip_string(c);
        return doc_scalar(d, T_STR, line, json_string_value(v),
                          json_string_length(v), out);
    case JSON_INTEGER:
        jc_skip_atom(c);
        snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return doc_scalar(d, T_INT, line, buf, strlen(buf), out);
    case JSON_REAL:
        jc_skip_atom(c);
        format_real(json_real_value(v), buf, sizeof buf);
        return doc_scalar(d, T_REAL, line, buf, strlen(buf), out);
    case JSON_TRUE:
    case JSON_FALSE:
        jc_skip_atom(c);
        return doc_scalar(d, T_BOOL, line, json_is_true(v) ? "true" : "false",
                          json_is_true(v) ? 4 : 5, out);
    case JSON_NULL:
    default:
        jc_skip_atom(c);
        return doc_scalar(d, T_NULL, line, "null", 4, out);
    }
}

static bm_status json_build(struct doc *d, const char *data, size_t len)
{
    /* Every value or key follows '{', '[', ',' or ':' (or is the first):
     * bound the number of values before jansson allocates them. */
    size_t count = 1;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char ch = data[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = false;
        } else if (ch == '"') {
            in_str = true;
        } else if (ch == '{' || ch == '[' || ch == ',' || ch == ':') {
            count++;
        }
    }
    if (count > BM_GRAPH_MAX_NODES)
        return doc_fail(d, 0, BM_E_FORMAT,
                        "too many values (more than %u) in one graph file",
                        BM_GRAPH_MAX_NODES);
    json_error_t je;
    json_t *j = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
    if (!j)
        return doc_fail(d, je.line > 0 ? (uint32_t)je.line : 0, BM_E_FORMAT,
                        "JSON syntax error: %s", je.text);
    struct jcur c = {data, data + len, 1, false};
    bm_status st = json_conv(d, &c, j, 1, &d->root);
    json_decref(j);
    return st;
}

/* ------------------------------------------------------------------------
 * doc -> module tree
 * ------------------------------------------------------------------------ */

struct gp {
    struct doc *d;
    const char *src;
    bm_tree *tree;
    bm_error *err;
    char *path; /* dotted name of the module being read, for messages */
    size_t n_path, cap_path;
    uint32_t max_entries;
};

static bm_status gfail(struct gp *g, uint32_t node, bm_status code,
                       const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static bm_status gfail(struct gp *g, uint32_t node, bm_status code,
                       const char *fmt, ...)
{
    char what[BM_ERROR_MSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    long line = node == NO_NODE ? 0 : (long)g->d->nodes[node].line;
    return bm_fail_at(g->err, code, g->src, line, NULL, -1, "%s", what);
}

/* A module tree call failed: add where in the file. */
static bm_status tree_fail(struct gp *g, uint32_t node, bm_status st)
{
    uint32_t line = node == NO_NODE ? 0 : g->d->nodes[node].line;
    if (line)
        bm_error_prefix(g->err, "%s:%u", g->src, line);
    else
        bm_error_prefix(g->err, "%s", g->src);
    return st;
}

static const char *T(const struct gp *g, uint32_t n)
{
    return ntext(g->d, n);
}

static uint8_t TY(const struct gp *g, uint32_t n)
{
    return g->d->nodes[n].type;
}

static const char *here(const struct gp *g)
{
    return g->n_path ? g->path : "(root)";
}

/* Append ".local" to the current path; returns the old length. */
static bool path_push(struct gp *g, const char *local, size_t *old)
{
    size_t ll = strlen(local);
    *old = g->n_path;
    if (!grow((void **)&g->path, &g->cap_path, g->n_path + ll + 2, 1))
        return false;
    if (g->n_path)
        g->path[g->n_path++] = '.';
    memcpy(g->path + g->n_path, local, ll + 1);
    g->n_path += ll;
    return true;
}

static void path_pop(struct gp *g, size_t old)
{
    g->n_path = old;
    if (g->path)
        g->path[old] = 0;
}

static bm_status want_type(struct gp *g, uint32_t node, uint8_t type,
                           const char *what)
{
    if (TY(g, node) == type)
        return BM_OK;
    if (TY(g, node) <= T_NULL)
        return gfail(g, node, BM_E_FORMAT, "%s must be %s, not %s '%.100s'", what,
                     type_names[type], type_names[TY(g, node)], T(g, node));
    return gfail(g, node, BM_E_FORMAT, "%s must be %s, not %s", what,
                 type_names[type], type_names[TY(g, node)]);
}

/* Match the keys of mapping m against names[]; slots[i] gets the value
 * node of names[i] or NO_NODE. Unknown keys are errors. */
static bm_status take_keys(struct gp *g, uint32_t m, const char *const *names,
                           int n, uint32_t *slots, const char *where,
                           const char *expected)
{
    for (int i = 0; i < n; i++)
        slots[i] = NO_NODE;
    for (uint32_t i = 0; i < g->d->nodes[m].b; i++) {
        uint32_t k = map_key(g->d, m, i);
        int j = 0;
        while (j < n && strcmp(T(g, k), names[j]) != 0)
            j++;
        if (j == n)
            return gfail(g, k, BM_E_FORMAT, "unknown key '%.200s' %s (expected %s)",
                         T(g, k), where, expected);
        slots[j] = map_val(g->d, m, i);
    }
    return BM_OK;
}

/* Expanded size of a module node (itself, its tensors, its submodules),
 * saturated just above the cap. Tolerates malformed nodes: they fail later
 * with a precise message. *culprit gets the first repeat that overflows. */
static uint64_t count_entries(const struct doc *d, uint32_t m, uint64_t max,
                              uint32_t *culprit)
{
    const uint64_t cap = max + 1;
    if (d->nodes[m].type != T_MAP)
        return 1;
    uint64_t n = 1, reps = 0;
    uint32_t repeat_node = NO_NODE, tmpl_node = NO_NODE;
    for (uint32_t i = 0; i < d->nodes[m].b; i++) {
        const char *k = ntext(d, map_key(d, m, i));
        uint32_t v = map_val(d, m, i);
        const gnode *vn = &d->nodes[v];
        if ((!strcmp(k, "params") || !strcmp(k, "buffers")) && vn->type == T_MAP) {
            n += vn->b;
        } else if (!strcmp(k, "modules") && vn->type == T_MAP) {
            for (uint32_t j = 0; j < vn->b; j++)
                n += count_entries(d, map_val(d, v, j), max, culprit);
        } else if (!strcmp(k, "repeat") && vn->type == T_INT) {
            int64_t r;
            if (text_int(ntext(d, v), &r) && r > 0) {
                reps = (uint64_t)r;
                repeat_node = v;
            }
        } else if (!strcmp(k, "template")) {
            tmpl_node = v;
        }
        if (n > cap)
            n = cap;
    }
    /* a template used zero times adds nothing */
    if (tmpl_node != NO_NODE && reps) {
        uint64_t t, tmpl = count_entries(d, tmpl_node, max, culprit);
        if (__builtin_mul_overflow(reps, tmpl, &t) || t > max) {
            t = cap;
            if (*culprit == NO_NODE)
                *culprit = repeat_node;
        }
        n += t;
    }
    return n > cap ? cap : n;
}

static bm_status build_tensor(struct gp *g, uint32_t key, uint32_t val,
                              int32_t module, bool is_buffer, bool dry)
{
    const char *local = T(g, key);
    uint32_t shape = NO_NODE;
    bm_dtype dt = g->tree->dtype;
    bool persistent = true;
    bm_status st;
    char full[512];
    snprintf(full, sizeof full, "%s%s%.200s", g->n_path ? g->path : "",
             g->n_path ? "." : "", local);
    if (TY(g, val) == T_SEQ) {
        shape = val;
    } else if (TY(g, val) == T_MAP) {
        static const char *const keys[] = {"shape", "dtype", "persistent"};
        uint32_t s[3] = {NO_NODE, NO_NODE, NO_NODE};
        char where[600];
        snprintf(where, sizeof where, "in %s '%.300s'",
                 is_buffer ? "buffer" : "parameter", full);
        if ((st = take_keys(g, val, keys, is_buffer ? 3 : 2, s, where,
                            is_buffer ? "shape, dtype, persistent" : "shape, dtype")))
            return st;
        if (s[0] == NO_NODE)
            return gfail(g, val, BM_E_FORMAT, "%s '%.300s' has no 'shape'",
                         is_buffer ? "buffer" : "parameter", full);
        shape = s[0];
        if (s[1] != NO_NODE) {
            if ((st = want_type(g, s[1], T_STR, "'dtype'")))
                return st;
            dt = bm_dtype_parse(T(g, s[1]));
            if (dt == BM_DTYPE_INVALID)
                return gfail(g, s[1], BM_E_INVALID,
                             "unknown dtype '%.100s' for '%.300s'", T(g, s[1]), full);
        }
        if (s[2] != NO_NODE) {
            if ((st = want_type(g, s[2], T_BOOL, "'persistent'")))
                return st;
            persistent = T(g, s[2])[0] == 't' || T(g, s[2])[0] == 'T';
        }
    } else {
        return gfail(g, val, BM_E_FORMAT,
                     "%s '%.300s' must be a shape list or a mapping with 'shape'",
                     is_buffer ? "buffer" : "parameter", full);
    }
    if ((st = want_type(g, shape, T_SEQ, "a shape")))
        return st;
    uint32_t ndim = g->d->nodes[shape].b;
    if (ndim > BM_MAX_DIMS)
        return gfail(g, shape, BM_E_UNSUPPORTED,
                     "'%.300s' has %u dimensions (at most %d)", full, ndim, BM_MAX_DIMS);
    int64_t dims[BM_MAX_DIMS];
    uint64_t numel = 1;
    for (uint32_t i = 0; i < ndim; i++) {
        uint32_t x = seq_item(g->d, shape, i);
        if (TY(g, x) != T_INT)
            return gfail(g, x, BM_E_INVALID,
                         "dimension %u of '%.300s' must be a non-negative integer, "
                         "not '%.100s'", i, full, TY(g, x) <= T_NULL ? T(g, x) : "...");
        if (!text_int(T(g, x), &dims[i]))
            return gfail(g, x, BM_E_OVERFLOW,
                         "dimension %u of '%.300s' is too large: %.100s", i, full,
                         T(g, x));
        if (dims[i] < 0)
            return gfail(g, x, BM_E_INVALID,
                         "dimension %u of '%.300s' is negative: %" PRId64, i, full,
                         dims[i]);
        if (__builtin_mul_overflow(numel, (uint64_t)dims[i], &numel))
            return gfail(g, x, BM_E_OVERFLOW,
                         "the shape of '%.300s' overflows (product of dimensions "
                         "too large)", full);
    }
    if (dry)
        return BM_OK;
    st = bm_tree_add_tensor(g->tree, module, local, dt, (int)ndim, dims, is_buffer,
                            persistent, g->err);
    return st ? tree_fail(g, key, st) : BM_OK;
}

static bm_status build_tensors(struct gp *g, uint32_t map, int32_t module,
                               bool is_buffer, bool dry)
{
    bm_status st;
    if ((st = want_type(g, map, T_MAP, is_buffer ? "'buffers'" : "'params'")))
        return st;
    for (uint32_t i = 0; i < g->d->nodes[map].b; i++)
        if ((st = build_tensor(g, map_key(g->d, map, i), map_val(g->d, map, i),
                               module, is_buffer, dry)))
            return st;
    return BM_OK;
}

/* Build the module at `node`, named by `key` (NO_NODE and local NULL for
 * the root), as a child of `parent`. dry: check only, add nothing (the
 * template of `repeat: 0`). */
static bm_status build_module(struct gp *g, uint32_t node, uint32_t key,
                              const char *local, int32_t parent, bool dry)
{
    static const char *const keys[] = {"class", "params", "buffers",
                                       "modules", "repeat", "template"};
    enum { K_CLASS, K_PARAMS, K_BUFFERS, K_MODULES, K_REPEAT, K_TEMPLATE };
    uint32_t s[6];
    bm_status st;
    size_t old = 0;
    if (local && !path_push(g, local, &old))
        return doc_nomem(g->d);
    char where[400];
    snprintf(where, sizeof where, "in module '%.300s'", here(g));
    if (TY(g, node) != T_MAP) {
        st = gfail(g, node, BM_E_FORMAT, "module '%.300s' must be a mapping, not %s",
                   here(g), type_names[TY(g, node)]);
        goto out;
    }
    if ((st = take_keys(g, node, keys, 6, s, where,
                        "class, params, buffers, modules, repeat, template")))
        goto out;
    if (s[K_CLASS] == NO_NODE) {
        st = gfail(g, node, BM_E_FORMAT, "module '%.300s' has no 'class'", here(g));
        goto out;
    }
    if ((st = want_type(g, s[K_CLASS], T_STR, "'class'")))
        goto out;
    if (s[K_MODULES] != NO_NODE && s[K_REPEAT] != NO_NODE) {
        st = gfail(g, s[K_REPEAT], BM_E_FORMAT,
                   "module '%.300s' has both 'modules' and 'repeat'", here(g));
        goto out;
    }
    if (s[K_TEMPLATE] != NO_NODE && s[K_REPEAT] == NO_NODE) {
        st = gfail(g, s[K_TEMPLATE], BM_E_FORMAT,
                   "module '%.300s' has 'template' without 'repeat'", here(g));
        goto out;
    }
    int64_t reps = 0;
    if (s[K_REPEAT] != NO_NODE) {
        uint32_t r = s[K_REPEAT];
        if (TY(g, r) != T_INT || !text_int(T(g, r), &reps) || reps < 0) {
            st = gfail(g, r, BM_E_INVALID,
                       "'repeat' must be an integer >= 0, not '%.100s'",
                       TY(g, r) <= T_NULL ? T(g, r) : type_names[TY(g, r)]);
            goto out;
        }
        if (s[K_TEMPLATE] == NO_NODE) {
            st = gfail(g, r, BM_E_FORMAT,
                       "module '%.300s' has 'repeat' without 'template'", here(g));
            goto out;
        }
    }

    int32_t idx = BM_NONE;
    if (!dry) {
        const char *cls = T(g, s[K_CLASS]);
        idx = parent == BM_NONE ? bm_tree_add_root(g->tree, cls, g->err)
                                : bm_tree_add_module(g->tree, parent, local, cls, g->err);
        if (idx == BM_NONE) {
            st = tree_fail(g, key != NO_NODE ? key : node,
                           g->err ? g->err->code : BM_E_INVALID);
            goto out;
        }
    }
    if (s[K_PARAMS] != NO_NODE && TY(g, s[K_PARAMS]) != T_NULL &&
        (st = build_tensors(g, s[K_PARAMS], idx, false, dry)))
        goto out;
    if (s[K_BUFFERS] != NO_NODE && TY(g, s[K_BUFFERS]) != T_NULL &&
        (st = build_tensors(g, s[K_BUFFERS], idx, true, dry)))
        goto out;
    if (s[K_MODULES] != NO_NODE && TY(g, s[K_MODULES]) != T_NULL) {
        uint32_t mm = s[K_MODULES];
        if ((st = want_type(g, mm, T_MAP, "'modules'")))
            goto out;
        for (uint32_t i = 0; i < g->d->nodes[mm].b; i++)
            if ((st = build_module(g, map_val(g->d, mm, i), map_key(g->d, mm, i),
                                   T(g, map_key(g->d, mm, i)), idx, dry)))
                goto out;
    }
    if (s[K_REPEAT] != NO_NODE) {
        /* a template used zero times is still checked, once: when only
         * checking, one copy says all there is to say */
        if (dry || reps == 0) {
            if ((st = build_module(g, s[K_TEMPLATE], NO_NODE, "0", idx, true)))
                goto out;
        } else {
            char name[24];
            for (int64_t i = 0; i < reps; i++) {
                snprintf(name, sizeof name, "%" PRId64, i);
                if ((st = build_module(g, s[K_TEMPLATE], NO_NODE, name, idx, false)))
                    goto out;
            }
        }
    }
    st = BM_OK;
out:
    if (local)
        path_pop(g, old);
    return st;
}

static bm_status json_from_node(struct gp *g, uint32_t n, json_t **out)
{
    json_t *j = NULL;
    bm_status st;
    const char *t = T(g, n);
    switch (TY(g, n)) {
    case T_MAP:
        if (!(j = json_object()))
            return doc_nomem(g->d);
        for (uint32_t i = 0; i < g->d->nodes[n].b; i++) {
            uint32_t k = map_key(g->d, n, i);
            json_t *v;
            if ((st = json_from_node(g, map_val(g->d, n, i), &v))) {
                json_decref(j);
                return st;
            }
            if (json_object_setn_new(j, T(g, k), g->d->nodes[k].b, v)) {
                json_decref(j);
                return gfail(g, k, BM_E_FORMAT, "invalid key in 'config'");
            }
        }
        break;
    case T_SEQ:
        if (!(j = json_array()))
            return doc_nomem(g->d);
        for (uint32_t i = 0; i < g->d->nodes[n].b; i++) {
            json_t *v;
            if ((st = json_from_node(g, seq_item(g->d, n, i), &v))) {
                json_decref(j);
                return st;
            }
            if (json_array_append_new(j, v)) {
                json_decref(j);
                return doc_nomem(g->d);
            }
        }
        break;
    case T_STR:
        if (!(j = json_stringn(t, g->d->nodes[n].b)))
            return gfail(g, n, BM_E_FORMAT, "string in 'config' is not valid UTF-8");
        break;
    case T_INT: {
        int64_t v;
        if (!text_int(t, &v))
            return gfail(g, n, BM_E_OVERFLOW,
                         "integer %.100s in 'config' is out of range", t);
        j = json_integer((json_int_t)v);
        break;
    }
    case T_REAL: {
        double v = text_real(t);
        if (!isfinite(v))
            return gfail(g, n, BM_E_UNSUPPORTED,
                         "'%.100s' in 'config' is not a finite number (JSON "
                         "cannot hold it)", t);
        j = json_real(v);
        break;
    }
    case T_BOOL:
        j = json_boolean(t[0] == 't' || t[0] == 'T');
        break;
    default:
        j = json_null();
        break;
    }
    if (!j)
        return doc_nomem(g->d);
    *out = j;
    return BM_OK;
}

static bm_status build_ties(struct gp *g, uint32_t tied)
{
    bm_status st;
    if ((st = want_type(g, tied, T_SEQ, "'tied'")))
        return st;
    bm_strtab seen = {0};
    const char **names = NULL;
    size_t cap = 0;
    for (uint32_t gi = 0; gi < g->d->nodes[tied].b && !st; gi++) {
        uint32_t grp = seq_item(g->d, tied, gi);
        if ((st = want_type(g, grp, T_SEQ, "a tied group")))
            break;
        uint32_t n = g->d->nodes[grp].b;
        if (n == 0) {
            st = gfail(g, grp, BM_E_INVALID, "empty tied group");
            break;
        }
        if (n > INT32_MAX || !grow((void **)&names, &cap, n, sizeof *names)) {
            st = doc_nomem(g->d);
            break;
        }
        for (uint32_t i = 0; i < n && !st; i++) {
            uint32_t x = seq_item(g->d, grp, i);
            if ((st = want_type(g, x, T_STR, "a tied name")))
                break;
            names[i] = T(g, x);
            /* the tree checks these too, but without the line */
            if (bm_tree_find_tensor(g->tree, names[i]) == BM_NONE) {
                st = gfail(g, x, BM_E_INVALID,
                           "tied name '%.300s' is not a parameter of the model",
                           names[i]);
                break;
            }
            int rc = bm_strtab_put(&seen, names[i], g->d->nodes[x].b, 0);
            if (rc < 0)
                st = doc_nomem(g->d);
            else if (rc == 0)
                st = gfail(g, x, BM_E_INVALID,
                           "'%.300s' appears in more than one tied group (or "
                           "twice in one)", names[i]);
        }
        if (!st && (st = bm_tree_add_tie(g->tree, (int)n, names, g->err)))
            st = tree_fail(g, grp, st);
    }
    free(names);
    bm_strtab_free(&seen);
    return st;
}

static bm_status build_graph(struct gp *g)
{
    static const char *const keys[] = {"format", "dtype", "name", "arch", "config",
                                       "no_split_modules", "tied", "root"};
    enum { K_FORMAT, K_DTYPE, K_NAME, K_ARCH, K_CONFIG, K_NO_SPLIT, K_TIED, K_ROOT };
    uint32_t s[8];
    bm_status st;
    struct doc *d = g->d;
    uint32_t top = d->root;
    if (TY(g, top) != T_MAP)
        return gfail(g, top, BM_E_FORMAT, "a graph file must be a mapping, not %s",
                     type_names[TY(g, top)]);
    if ((st = take_keys(g, top, keys, 8, s, "at the top level",
                        "format, name, arch, config, dtype, no_split_modules, "
                        "tied, root")))
        return st;
    if (s[K_FORMAT] == NO_NODE)
        return gfail(g, top, BM_E_FORMAT, "missing 'format: " FORMAT_NAME "'");
    uint32_t f = s[K_FORMAT];
    if (TY(g, f) > T_NULL)
        return want_type(g, f, T_STR, "'format'");
    if (TY(g, f) != T_STR || strcmp(T(g, f), FORMAT_NAME) != 0)
        return gfail(g, f,
                     strncmp(T(g, f), "bmplan-graph/", 13) == 0 ? BM_E_UNSUPPORTED
                                                                : BM_E_FORMAT,
                     "unsupported format '%.100s' (expected " FORMAT_NAME ")",
                     T(g, f));
    if (s[K_ROOT] == NO_NODE)
        return gfail(g, top, BM_E_FORMAT, "missing 'root' (the model's top module)");
    if (s[K_DTYPE] != NO_NODE) {
        if ((st = want_type(g, s[K_DTYPE], T_STR, "'dtype'")))
            return st;
        bm_dtype dt = bm_dtype_parse(T(g, s[K_DTYPE]));
        if (dt == BM_DTYPE_INVALID)
            return gfail(g, s[K_DTYPE], BM_E_INVALID, "unknown dtype '%.100s'",
                         T(g, s[K_DTYPE]));
        g->tree->dtype = dt;
    }
    const char *meta[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        uint32_t v = s[i == 0 ? K_NAME : K_ARCH];
        if (v == NO_NODE || TY(g, v) == T_NULL)
            continue;
        if ((st = want_type(g, v, T_STR, i == 0 ? "'name'" : "'arch'")))
            return st;
        meta[i] = T(g, v);
    }
    if ((st = bm_tree_set_meta(g->tree, meta[0], meta[1], g->err)))
        return st;
    if (s[K_CONFIG] != NO_NODE && TY(g, s[K_CONFIG]) != T_NULL) {
        json_t *cfg;
        if ((st = want_type(g, s[K_CONFIG], T_MAP, "'config'")) ||
            (st = json_from_node(g, s[K_CONFIG], &cfg)))
            return st;
        g->tree->config = cfg;
    }
    uint32_t ns = s[K_NO_SPLIT];
    if (ns != NO_NODE && TY(g, ns) != T_NULL) {
        if ((st = want_type(g, ns, T_SEQ, "'no_split_modules'")))
            return st;
        if ((st = bm_tree_add_no_split(g->tree, NULL, g->err)))
            return st;
        for (uint32_t i = 0; i < d->nodes[ns].b; i++) {
            uint32_t x = seq_item(d, ns, i);
            if ((st = want_type(g, x, T_STR, "a no_split_modules entry")))
                return st;
            if ((st = bm_tree_add_no_split(g->tree, T(g, x), g->err)))
                return st;
        }
    }
    uint32_t culprit = NO_NODE;
    if (count_entries(d, s[K_ROOT], g->max_entries, &culprit) > g->max_entries) {
        if (culprit != NO_NODE)
            return gfail(g, culprit, BM_E_FORMAT,
                         "'repeat: %.40s' expands the graph beyond %u modules and "
                         "tensors", T(g, culprit), g->max_entries);
        return gfail(g, s[K_ROOT], BM_E_FORMAT,
                     "the graph has more than %u modules and tensors", g->max_entries);
    }
    if ((st = build_module(g, s[K_ROOT], NO_NODE, NULL, BM_NONE, false)))
        return st;
    if (s[K_TIED] != NO_NODE && TY(g, s[K_TIED]) != T_NULL &&
        (st = build_ties(g, s[K_TIED])))
        return st;
    return bm_tree_finish(g->tree, g->src, g->err);
}

static bm_status parse_doc(const char *data, size_t len, const char *source,
                           bool json, uint32_t max_entries, bm_tree **out,
                           bm_error *err)
{
    *out = NULL;
    const char *src = source ? source : "graph";
    if (len > BM_GRAPH_MAX_BYTES)
        return bm_fail_at(err, BM_E_FORMAT, src, 0, NULL, -1,
                          "graph file is too large (%zu bytes, at most %u)", len,
                          BM_GRAPH_MAX_BYTES);
    if (!data && len)
        return bm_fail(err, BM_E_INTERNAL, "no data to parse");
    /* a UTF-8 byte order mark says nothing more than UTF-8 */
    if (data && len >= 3 && memcmp(data, "\xef\xbb\xbf", 3) == 0)
        data += 3, len -= 3;
    struct doc d = {.source = src, .err = err, .root = NO_NODE};
    bm_status st = json ? json_build(&d, data ? data : "", len)
                        : yaml_build(&d, data ? data : "", len);
    if (st) {
        doc_free(&d);
        return st;
    }
    struct gp g = {.d = &d, .src = src, .err = err, .max_entries = max_entries};
    if (!(g.tree = bm_tree_new())) {
        st = doc_nomem(&d);
        doc_free(&d);
        return st;
    }
    st = build_graph(&g);
    free(g.path);
    doc_free(&d);
    if (st) {
        bm_tree_free(g.tree);
        return st;
    }
    *out = g.tree;
    return BM_OK;
}

bm_status bm_graph_parse_yaml(const char *data, size_t len, const char *source,
                              bm_tree **out, bm_error *err)
{
    return parse_doc(data, len, source, false, BM_GRAPH_MAX_ENTRIES, out, err);
}

bm_status bm_graph_parse_json(const char *data, size_t len, const char *source,
                              bm_tree **out, bm_error *err)
{
    return parse_doc(data, len, source, true, BM_GRAPH_MAX_ENTRIES, out, err);
}

bm_status bm_graph_parse_capped(const char *data, size_t len, const char *source,
                                uint32_t max_entries, bm_tree **out, bm_error *err)
{
    size_t i = 0;
    if (max_entries == 0 || max_entries > BM_GRAPH_MAX_ENTRIES)
        max_entries = BM_GRAPH_MAX_ENTRIES;
    if (len > BM_GRAPH_MAX_BYTES || !data)
        return parse_doc(data, len, source, false, max_entries, out, err);
    if (len >= 3 && memcmp(data, "\xef\xbb\xbf", 3) == 0)
        i = 3;
    while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' ||
                       data[i] == '\r'))
        i++;
    bool json = i < len && data[i] == '{';
    return parse_doc(data, len, source, json, max_entries, out, err);
}

bm_status bm_graph_parse(const char *data, size_t len, const char *source,
                         bm_tree **out, bm_error *err)
{
    return bm_graph_parse_capped(data, len, source, 0, out, err);
}

bm_status bm_graph_load(const char *path, bm_tree **out, bm_error *err)
{
    char *data;
    size_t len;
    *out = NULL;
    bm_status st = bm_read_file(path, BM_GRAPH_MAX_BYTES, &data, &len, err);
    if (st)
        return st;
    st = bm_graph_parse(data, len, path, out, err);
    free(data);
    return st;
}

/* ------------------------------------------------------------------------
 * Writer
 * ------------------------------------------------------------------------ */

/* Modules deeper than this would nest past BM_GRAPH_MAX_DEPTH in the file
 * (two levels per module, five around the deepest tensor), so the reader
 * could not take the output back. */
#define WRITE_MAX_MODULE_DEPTH ((BM_GRAPH_MAX_DEPTH - 5) / 2)
/* Longer YAML keys use the explicit "? key" form: libyaml looks at most
 * 1024 characters ahead for the ':' of an implicit key. */
#define YAML_IMPLICIT_KEY_MAX 200

static void sb_indent(bm_sbuf *b, int n)
{
    static const char spaces[] = "                                ";
    while (n > 0) {
        int k = n < 32 ? n : 32;
        bm_sb_add(b, spaces, (size_t)k);
        n -= k;
    }
}

struct gw {
    const bm_tree *t;
    bm_sbuf b;
    uint64_t *hash; /* structure of each module's subtree */
    int32_t *rep;   /* N when the module's children are written as repeat N */
    bm_error *err;
    bm_status st;   /* first failure while writing */
};

static void gw_fail(struct gw *w, bm_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void gw_fail(struct gw *w, bm_status code, const char *fmt, ...)
{
    if (w->st)
        return;
    char what[BM_ERROR_MSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    w->st = bm_fail(w->err, code, "cannot write the graph: %s", what);
}

/* Decode one UTF-8 code point at s[*i]; false when the bytes are not
 * well-formed UTF-8 (overlong forms, surrogates and > U+10FFFF included). */
static bool utf8_next(const unsigned char *s, size_t n, size_t *i, uint32_t *cp)
{
    unsigned c = s[*i];
    int len;
    uint32_t min;
    if (c < 0x80) {
        *cp = c;
        (*i)++;
        return true;
    } else if ((c & 0xE0) == 0xC0) {
        len = 2, min = 0x80, *cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, min = 0x800, *cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4, min = 0x10000, *cp = c & 0x07;
    } else {
        return false;
    }
    if (*i + (size_t)len > n)
        return false;
    for (int k = 1; k < len; k++) {
        unsigned x = s[*i + (size_t)k];
        if ((x & 0xC0) != 0x80)
            return false;
        *cp = (*cp << 6) | (x & 0x3F);
    }
    if (*cp < min || *cp > 0x10FFFF || (*cp >= 0xD800 && *cp <= 0xDFFF))
        return false;
    *i += (size_t)len;
    return true;
}

static bool check_utf8(struct gw *w, const char *s)
{
    size_t n = strlen(s), i = 0;
    uint32_t cp;
    while (i < n)
        if (!utf8_next((const unsigned char *)s, n, &i, &cp)) {
            gw_fail(w, BM_E_INVALID, "'%.200s' is not valid UTF-8", s);
            return false;
        }
    return true;
}

/* --- YAML --- */

static bool yaml_plain_ok(const char *s)
{
    static const char *const yaml11_words[] = {
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
        "on", "On", "ON", "off", "Off", "OFF"};
    size_t n = strlen(s);
    if (n == 0)
        return false;
    char c = s[0];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == '/'))
        return false;
    for (size_t i = 0; i < n; i++) {
        c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '/' ||
              c == '-' || c == '+'))
            return false;
    }
    if (resolve_plain(s, n) != T_STR)
        return false;
    /* YAML 1.1 readers (PyYAML) take these as booleans */
    for (size_t i = 0; i < sizeof yaml11_words / sizeof *yaml11_words; i++)
        if (strcmp(s, yaml11_words[i]) == 0)
            return false;
    return true;
}

static void y_scalar(struct gw *w, const char *s)
{
    if (yaml_plain_ok(s)) {
        bm_sb_str(&w->b, s);
        return;
    }
    if (!check_utf8(w, s))
        return;
    bm_sb_add(&w->b, "\"", 1);
    size_t n = strlen(s), i = 0;
    while (i < n) {
        size_t start = i;
        uint32_t cp;
        utf8_next((const unsigned char *)s, n, &i, &cp);
        switch (cp) {
        case '"':
            bm_sb_str(&w->b, "\\\"");
            break;
        case '\\':
            bm_sb_str(&w->b, "\\\\");
            break;
        case '\n':
            bm_sb_str(&w->b, "\\n");
            break;
        case '\t':
            bm_sb_str(&w->b, "\\t");
            break;
        case '\r':
            bm_sb_str(&w->b, "\\r");
            break;
        case 0x2028:
            bm_sb_str(&w->b, "\\L");
            break;
        case 0x2029:
            bm_sb_str(&w->b, "\\P");
            break;
        default:
            /* what YAML does not allow raw in a document, or would fold */
            if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F))
                bm_sb_printf(&w->b, "\\x%02X", (unsigned)cp);
            else if (cp == 0xFEFF || cp == 0xFFFE || cp == 0xFFFF)
                bm_sb_printf(&w->b, "\\u%04X", (unsigned)cp);
            else
                bm_sb_add(&w->b, s + start, i - start);
        }
    }
    bm_sb_add(&w->b, "\"", 1);
}

/* "KEY:" at indentation ind; the caller writes " value\n" or "\n" and a
 * nested block. */
static void y_key(struct gw *w, const char *k, int ind)
{
    sb_indent(&w->b, ind);
    if (strlen(k) > YAML_IMPLICIT_KEY_MAX) {
        bm_sb_str(&w->b, "? ");
        y_scalar(w, k);
        bm_sb_add(&w->b, "\n", 1);
        sb_indent(&w->b, ind);
        bm_sb_add(&w->b, ":", 1);
        return;
    }
    y_scalar(w, k);
    bm_sb_add(&w->b, ":", 1);
}

static void w_number(struct gw *w, json_t *v)
{
    char buf[64];
    if (json_is_integer(v)) {
        bm_sb_printf(&w->b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    } else {
        format_real(json_real_value(v), buf, sizeof buf);
        bm_sb_str(&w->b, buf);
    }
}

static bool json_is_scalar(json_t *v)
{
    return !json_is_object(v) && !json_is_array(v);
}

static void y_json_scalar(struct gw *w, json_t *v)
{
    if (json_is_string(v)) {
        if (strlen(json_string_value(v)) != json_string_length(v))
            gw_fail(w, BM_E_INVALID, "a string in 'config' holds a NUL character");
        else
            y_scalar(w, json_string_value(v));
    } else if (json_is_number(v)) {
        w_number(w, v);
    } else {
        bm_sb_str(&w->b, json_is_true(v) ? "true" : json_is_false(v) ? "false" : "null");
    }
}

/* A config value, written after "key:" (or "-") at indentation ind. */
static void y_json(struct gw *w, json_t *v, int ind, int depth)
{
    if (depth > BM_GRAPH_MAX_DEPTH - 2) {
        gw_fail(w, BM_E_UNSUPPORTED, "'config' nests deeper than %d levels",
                BM_GRAPH_MAX_DEPTH - 2);
        return;
    }
    if (json_is_object(v)) {
        if (json_object_size(v) == 0) {
            bm_sb_str(&w->b, " {}\n");
            return;
        }
        bm_sb_add(&w->b, "\n", 1);
        for (void *it = json_object_iter(v); it && !w->st; it = json_object_iter_next(v, it)) {
            const char *k = json_object_iter_key(it);
            if (strlen(k) != json_object_iter_key_len(it)) {
                gw_fail(w, BM_E_INVALID, "a key in 'config' holds a NUL character");
                return;
            }
            y_key(w, k, ind);
            y_json(w, json_object_iter_value(it), ind + 2, depth + 1);
        }
    } else if (json_is_array(v)) {
        size_t n = json_array_size(v);
        bool flat = true;
        for (size_t i = 0; i < n; i++)
            flat = flat && json_is_scalar(json_array_get(v, i));
        if (flat) {
            bm_sb_str(&w->b, " [");
            for (size_t i = 0; i < n; i++) {
                if (i)
                    bm_sb_str(&w->b, ", ");
                y_json_scalar(w, json_array_get(v, i));
            }
            bm_sb_str(&w->b, "]\n");
            return;
        }
        bm_sb_add(&w->b, "\n", 1);
        for (size_t i = 0; i < n && !w->st; i++) {
            sb_indent(&w->b, ind);
            bm_sb_add(&w->b, "-", 1);
            y_json(w, json_array_get(v, i), ind + 2, depth + 1);
        }
    } else {
        bm_sb_add(&w->b, " ", 1);
        y_json_scalar(w, v);
        bm_sb_add(&w->b, "\n", 1);
    }
}

static void w_shape(struct gw *w, const bm_tensor *t)
{
    bm_sb_add(&w->b, "[", 1);
    for (int i = 0; i < t->ndim; i++)
        bm_sb_printf(&w->b, i ? ", %" PRId64 : "%" PRId64, t->shape[i]);
    bm_sb_add(&w->b, "]", 1);
}

static bool short_form(const struct gw *w, const bm_tensor *t)
{
    return t->dtype == w->t->dtype && (!t->is_buffer || t->persistent);
}

static void y_tensor(struct gw *w, const bm_tensor *t)
{
    if (short_form(w, t)) {
        w_shape(w, t);
        return;
    }
    bm_sb_str(&w->b, "{shape: ");
    w_shape(w, t);
    bm_sb_printf(&w->b, ", dtype: %s", bm_dtype_name(t->dtype));
    if (t->is_buffer && !t->persistent)
        bm_sb_str(&w->b, ", persistent: false");
    bm_sb_add(&w->b, "}", 1);
}

/* A module without children is written on one line, {class: X, params:
 * {...}}, when that line stays short. */
#define FLOW_MODULE_MAX 100
static void y_tensor_group(struct gw *w, const bm_module *m, bool buffers, int ind,
                           bool flow)
{
    int32_t first = m->tensor_begin + (buffers ? m->n_params : 0);
    int32_t n = buffers ? m->n_buffers : m->n_params;
    if (!n)
        return;
    if (flow) {
        bm_sb_str(&w->b, buffers ? ", buffers: {" : ", params: {");
        for (int32_t i = 0; i < n; i++) {
            const bm_tensor *t = &w->t->tensors[first + i];
            if (i)
                bm_sb_str(&w->b, ", ");
            y_scalar(w, t->local);
            bm_sb_str(&w->b, ": ");
            y_tensor(w, t);
        }
        bm_sb_add(&w->b, "}", 1);
        return;
    }
    sb_indent(&w->b, ind);
    bm_sb_str(&w->b, buffers ? "buffers:\n" : "params:\n");
    for (int32_t i = 0; i < n; i++) {
        const bm_tensor *t = &w->t->tensors[first + i];
        y_key(w, t->local, ind + 2);
        bm_sb_add(&w->b, " ", 1);
        y_tensor(w, t);
        bm_sb_add(&w->b, "\n", 1);
    }
}

/* Module m, written after "key:" at indentation ind. */
static void y_module(struct gw *w, int32_t mi, int ind)
{
    const bm_module *m = &w->t->modules[mi];
    if (w->st || w->b.oom)
        return;
    if (!m->n_children) {
        size_t mark = w->b.n;
        bm_sb_str(&w->b, " {class: ");
        y_scalar(w, m->cls);
        y_tensor_group(w, m, false, 0, true);
        y_tensor_group(w, m, true, 0, true);
        bm_sb_str(&w->b, "}\n");
        if (w->b.oom || w->b.n - mark <= FLOW_MODULE_MAX)
            return;
        w->b.n = mark;
    }
    bm_sb_add(&w->b, "\n", 1);
    sb_indent(&w->b, ind);
    bm_sb_str(&w->b, "class: ");
    y_scalar(w, m->cls);
    bm_sb_add(&w->b, "\n", 1);
    y_tensor_group(w, m, false, ind, false);
    y_tensor_group(w, m, true, ind, false);
    if (w->rep[mi]) {
        sb_indent(&w->b, ind);
        bm_sb_printf(&w->b, "repeat: %" PRId32 "\n", w->rep[mi]);
        sb_indent(&w->b, ind);
        bm_sb_str(&w->b, "template:");
        y_module(w, m->first_child, ind + 2);
    } else if (m->n_children) {
        sb_indent(&w->b, ind);
        bm_sb_str(&w->b, "modules:\n");
        for (int32_t c = m->first_child; c != BM_NONE; c = w->t->modules[c].next_sibling) {
            y_key(w, w->t->modules[c].local, ind + 2);
            y_module(w, c, ind + 4);
        }
    }
}

static void y_flow_names(struct gw *w, int n, const char *const *names)
{
    bm_sb_add(&w->b, "[", 1);
    for (int i = 0; i < n; i++) {
        if (i)
            bm_sb_str(&w->b, ", ");
        y_scalar(w, names[i]);
    }
    bm_sb_add(&w->b, "]", 1);
}

static void write_yaml(struct gw *w)
{
    const bm_tree *t = w->t;
    bm_sb_str(&w->b, "format: " FORMAT_NAME "\n");
    if (t->name) {
        bm_sb_str(&w->b, "name: ");
        y_scalar(w, t->name);
        bm_sb_add(&w->b, "\n", 1);
    }
    if (t->arch) {
        bm_sb_str(&w->b, "arch: ");
        y_scalar(w, t->arch);
        bm_sb_add(&w->b, "\n", 1);
    }
    if (t->config) {
        bm_sb_str(&w->b, "config:");
        y_json(w, t->config, 2, 1);
    }
    bm_sb_printf(&w->b, "dtype: %s\n", bm_dtype_name(t->dtype));
    if (t->has_no_split) {
        bm_sb_str(&w->b, "no_split_modules: ");
        y_flow_names(w, t->n_no_split, (const char *const *)t->no_split);
        bm_sb_add(&w->b, "\n", 1);
    }
    if (t->n_ties) {
        bm_sb_str(&w->b, "tied:\n");
        for (int32_t g = 0; g < t->n_ties; g++) {
            bm_sb_str(&w->b, "  - [");
            for (int32_t i = 0; i < t->ties[g].n; i++) {
                if (i)
                    bm_sb_str(&w->b, ", ");
                y_scalar(w, t->tensors[t->ties[g].tensors[i]].name);
            }
            bm_sb_str(&w->b, "]\n");
        }
    }
    bm_sb_str(&w->b, "root:");
    y_module(w, 0, 2);
}

/* --- JSON --- */

static void j_string(struct gw *w, const char *s)
{
    if (!check_utf8(w, s))
        return;
    bm_sb_add(&w->b, "\"", 1);
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        switch (c) {
        case '"':
            bm_sb_str(&w->b, "\\\"");
            break;
        case '\\':
            bm_sb_str(&w->b, "\\\\");
            break;
        case '\n':
            bm_sb_str(&w->b, "\\n");
            break;
        case '\t':
            bm_sb_str(&w->b, "\\t");
            break;
        case '\r':
            bm_sb_str(&w->b, "\\r");
            break;
        default:
            if (c < 0x20)
                bm_sb_printf(&w->b, "\\u%04x", c);
            else
                bm_sb_add(&w->b, p, 1);
        }
    }
    bm_sb_add(&w->b, "\"", 1);
}

static void j_json(struct gw *w, json_t *v, int ind, int depth)
{
    if (depth > BM_GRAPH_MAX_DEPTH - 2) {
        gw_fail(w, BM_E_UNSUPPORTED, "'config' nests deeper than %d levels",
                BM_GRAPH_MAX_DEPTH - 2);
        return;
    }
    if (json_is_object(v)) {
        if (json_object_size(v) == 0) {
            bm_sb_str(&w->b, "{}");
            return;
        }
        bm_sb_str(&w->b, "{\n");
        bool first = true;
        for (void *it = json_object_iter(v); it && !w->st; it = json_object_iter_next(v, it)) {
            const char *k = json_object_iter_key(it);
            if (strlen(k) != json_object_iter_key_len(it)) {
                gw_fail(w, BM_E_INVALID, "a key in 'config' holds a NUL character");
                return;
            }
            if (!first)
                bm_sb_str(&w->b, ",\n");
            first = false;
            sb_indent(&w->b, ind + 2);
            j_string(w, k);
            bm_sb_str(&w->b, ": ");
            j_json(w, json_object_iter_value(it), ind + 2, depth + 1);
        }
        bm_sb_add(&w->b, "\n", 1);
        sb_indent(&w->b, ind);
        bm_sb_add(&w->b, "}", 1);
    } else if (json_is_array(v)) {
        size_t n = json_array_size(v);
        bool flat = true;
        for (size_t i = 0; i < n; i++)
            flat = flat && json_is_scalar(json_array_get(v, i));
        bm_sb_str(&w->b, flat ? "[" : "[\n");
        for (size_t i = 0; i < n && !w->st; i++) {
            if (i)
                bm_sb_str(&w->b, flat ? ", " : ",\n");
            if (!flat)
                sb_indent(&w->b, ind + 2);
            j_json(w, json_array_get(v, i), ind + 2, depth + 1);
        }
        if (!flat) {
            bm_sb_add(&w->b, "\n", 1);
            sb_indent(&w->b, ind);
        }
        bm_sb_add(&w->b, "]", 1);
    } else if (json_is_string(v)) {
        if (strlen(json_string_value(v)) != json_string_length(v))
            gw_fail(w, BM_E_INVALID, "a string in 'config' holds a NUL character");
        else
            j_string(w, json_string_value(v));
    } else if (json_is_number(v)) {
        w_number(w, v);
    } else {
        bm_sb_str(&w->b, json_is_true(v) ? "true" : json_is_false(v) ? "false" : "null");
    }
}

static void j_tensor(struct gw *w, const bm_tensor *t)
{
    if (short_form(w, t)) {
        w_shape(w, t);
        return;
    }
    bm_sb_str(&w->b, "{\"shape\": ");
    w_shape(w, t);
    bm_sb_printf(&w->b, ", \"dtype\": \"%s\"", bm_dtype_name(t->dtype));
    if (t->is_buffer && !t->persistent)
        bm_sb_str(&w->b, ", \"persistent\": false");
    bm_sb_add(&w->b, "}", 1);
}

static void j_tensor_group(struct gw *w, const bm_module *m, bool buffers, int ind,
                           bool flow)
{
    int32_t first = m->tensor_begin + (buffers ? m->n_params : 0);
    int32_t n = buffers ? m->n_buffers : m->n_params;
    if (!n)
        return;
    if (!flow) {
        bm_sb_str(&w->b, ",\n");
        sb_indent(&w->b, ind);
    } else {
        bm_sb_str(&w->b, ", ");
    }
    bm_sb_str(&w->b, buffers ? "\"buffers\": {" : "\"params\": {");
    for (int32_t i = 0; i < n; i++) {
        const bm_tensor *t = &w->t->tensors[first + i];
        if (i)
            bm_sb_add(&w->b, ",", 1);
        if (flow) {
            if (i)
                bm_sb_add(&w->b, " ", 1);
        } else {
            bm_sb_add(&w->b, "\n", 1);
            sb_indent(&w->b, ind + 2);
        }
        j_string(w, t->local);
        bm_sb_str(&w->b, ": ");
        j_tensor(w, t);
    }
    if (!flow) {
        bm_sb_add(&w->b, "\n", 1);
        sb_indent(&w->b, ind);
    }
    bm_sb_add(&w->b, "}", 1);
}

/* Module mi as a JSON value whose closing brace is at indentation ind. */
static void j_module(struct gw *w, int32_t mi, int ind)
{
    const bm_module *m = &w->t->modules[mi];
    if (w->st || w->b.oom)
        return;
    if (!m->n_children) {
        size_t mark = w->b.n;
        bm_sb_str(&w->b, "{\"class\": ");
        j_string(w, m->cls);
        j_tensor_group(w, m, false, 0, true);
        j_tensor_group(w, m, true, 0, true);
        bm_sb_add(&w->b, "}", 1);
        if (w->b.oom || w->b.n - mark <= FLOW_MODULE_MAX)
            return;
        w->b.n = mark;
    }
    bm_sb_str(&w->b, "{\n");
    sb_indent(&w->b, ind + 2);
    bm_sb_str(&w->b, "\"class\": ");
    j_string(w, m->cls);
    j_tensor_group(w, m, false, ind + 2, false);
    j_tensor_group(w, m, true, ind + 2, false);
    if (w->rep[mi]) {
        bm_sb_str(&w->b, ",\n");
        sb_indent(&w->b, ind + 2);
        bm_sb_printf(&w->b, "\"repeat\": %" PRId32 ",\n", w->rep[mi]);
        sb_indent(&w->b, ind + 2);
        bm_sb_str(&w->b, "\"template\": ");
        j_module(w, m->first_child, ind + 2);
    } else if (m->n_children) {
        bm_sb_str(&w->b, ",\n");
        sb_indent(&w->b, ind + 2);
        bm_sb_str(&w->b, "\"modules\": {");
        for (int32_t c = m->first_child; c != BM_NONE; c = w->t->modules[c].next_sibling) {
            bm_sb_str(&w->b, c == m->first_child ? "\n" : ",\n");
            sb_indent(&w->b, ind + 4);
            j_string(w, w->t->modules[c].local);
            bm_sb_str(&w->b, ": ");
            j_module(w, c, ind + 4);
        }
        bm_sb_add(&w->b, "\n", 1);
        sb_indent(&w->b, ind + 2);
        bm_sb_add(&w->b, "}", 1);
    }
    bm_sb_add(&w->b, "\n", 1);
    sb_indent(&w->b, ind);
    bm_sb_add(&w->b, "}", 1);
}

static void write_json(struct gw *w)
{
    const bm_tree *t = w->t;
    bm_sb_str(&w->b, "{\n  \"format\": \"" FORMAT_NAME "\"");
    if (t->name) {
        bm_sb_str(&w->b, ",\n  \"name\": ");
        j_string(w, t->name);
    }
    if (t->arch) {
        bm_sb_str(&w->b, ",\n  \"arch\": ");
        j_string(w, t->arch);
    }
    if (t->config) {
        bm_sb_str(&w->b, ",\n  \"config\": ");
        j_json(w, t->config, 2, 1);
    }
    bm_sb_printf(&w->b, ",\n  \"dtype\": \"%s\"", bm_dtype_name(t->dtype));
    if (t->has_no_split) {
        bm_sb_str(&w->b, ",\n  \"no_split_modules\": [");
        for (int32_t i = 0; i < t->n_no_split; i++) {
            if (i)
                bm_sb_str(&w->b, ", ");
            j_string(w, t->no_split[i]);
        }
        bm_sb_add(&w->b, "]", 1);
    }
    if (t->n_ties) {
        bm_sb_str(&w->b, ",\n  \"tied\": [");
        for (int32_t g = 0; g < t->n_ties; g++) {
            bm_sb_str(&w->b, g ? ",\n    [" : "\n    [");
            for (int32_t i = 0; i < t->ties[g].n; i++) {
                if (i)
                    bm_sb_str(&w->b, ", ");
                j_string(w, t->tensors[t->ties[g].tensors[i]].name);
            }
            bm_sb_add(&w->b, "]", 1);
        }
        bm_sb_str(&w->b, "\n  ]");
    }
    bm_sb_str(&w->b, ",\n  \"root\": ");
    j_module(w, 0, 2);
    bm_sb_str(&w->b, "\n}\n");
}

/* --- repeat detection --- */

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
    return h * 0x100000001B3ULL;
}

static bool same_tensor(const bm_tensor *a, const bm_tensor *b)
{
    return strcmp(a->local, b->local) == 0 && a->dtype == b->dtype &&
           a->ndim == b->ndim && a->is_buffer == b->is_buffer &&
           a->persistent == b->persistent &&
           memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof *a->shape) == 0;
}

/* Are the subtrees at a and b the same apart from the names of a and b?
 * In pre-order, equal depth sequences mean equal shapes. */
static bool same_subtree(const bm_tree *t, int32_t a, int32_t b)
{
    int32_t n = t->modules[a].subtree_end - a;
    if (t->modules[b].subtree_end - b != n)
        return false;
    int32_t da = t->modules[a].depth, db = t->modules[b].depth;
    for (int32_t k = 0; k < n; k++) {
        const bm_module *x = &t->modules[a + k], *y = &t->modules[b + k];
        if (k && (x->depth - da != y->depth - db || strcmp(x->local, y->local) != 0))
            return false;
        if (strcmp(x->cls, y->cls) != 0 || x->n_params != y->n_params ||
            x->n_buffers != y->n_buffers)
            return false;
        for (int32_t i = 0; i < x->n_params + x->n_buffers; i++)
            if (!same_tensor(&t->tensors[x->tensor_begin + i],
                             &t->tensors[y->tensor_begin + i]))
                return false;
    }
    return true;
}

static void find_repeats(struct gw *w)
{
    const bm_tree *t = w->t;
    /* children follow their parent in pre-order: hash bottom-up */
    for (int32_t m = t->n_modules - 1; m >= 0; m--) {
        const bm_module *mod = &t->modules[m];
        uint64_t h = bm_hash_bytes(mod->cls, strlen(mod->cls));
        for (int32_t i = 0; i < mod->n_params + mod->n_buffers; i++) {
            const bm_tensor *x = &t->tensors[mod->tensor_begin + i];
            h = mix(h, bm_hash_bytes(x->local, strlen(x->local)));
            h = mix(h, (uint64_t)x->dtype | (uint64_t)x->is_buffer << 8 |
                           (uint64_t)x->persistent << 9 | (uint64_t)x->ndim << 10);
            for (int d = 0; d < x->ndim; d++)
                h = mix(h, (uint64_t)x->shape[d]);
        }
        for (int32_t c = mod->first_child; c != BM_NONE; c = t->modules[c].next_sibling)
            h = mix(mix(h, bm_hash_bytes(t->modules[c].local,
                                         strlen(t->modules[c].local))),
                    w->hash[c]);
        w->hash[m] = h;
    }
    for (int32_t m = 0; m < t->n_modules; m++) {
        const bm_module *mod = &t->modules[m];
        w->rep[m] = 0;
        if (mod->n_children < 2)
            continue;
        int32_t first = mod->first_child, i = 0;
        bool ok = true;
        for (int32_t c = first; c != BM_NONE && ok; c = t->modules[c].next_sibling, i++) {
            char name[16];
            snprintf(name, sizeof name, "%" PRId32, i);
            ok = strcmp(t->modules[c].local, name) == 0 &&
                 (c == first || (w->hash[c] == w->hash[first] &&
                                 same_subtree(t, first, c)));
        }
        if (ok)
            w->rep[m] = mod->n_children;
    }
}

bm_status bm_graph_write(const bm_tree *tree, bm_graph_format fmt, char **out,
                         size_t *len, bm_error *err)
{
    *out = NULL;
    if (len)
        *len = 0;
    if (!tree || tree->n_modules < 1 || !tree->modules)
        return bm_fail(err, BM_E_INVALID, "cannot write the graph: the tree is empty");
    if (fmt != BM_GRAPH_YAML && fmt != BM_GRAPH_JSON)
        return bm_fail(err, BM_E_INVALID, "cannot write the graph: unknown format %d",
                       (int)fmt);
    if (tree->config && !json_is_object((json_t *)tree->config))
        return bm_fail(err, BM_E_INVALID,
                       "cannot write the graph: 'config' must be a JSON object");
    for (int32_t m = 0; m < tree->n_modules; m++)
        if (tree->modules[m].depth > WRITE_MAX_MODULE_DEPTH)
            return bm_fail(err, BM_E_UNSUPPORTED,
                           "cannot write the graph: module '%.200s' is %d levels deep "
                           "(graph files hold at most %d)", tree->modules[m].name,
                           tree->modules[m].depth, WRITE_MAX_MODULE_DEPTH);
    struct gw w = {.t = tree, .err = err};
    w.hash = malloc((size_t)tree->n_modules * sizeof *w.hash);
    w.rep = malloc((size_t)tree->n_modules * sizeof *w.rep);
    if (!w.hash || !w.rep) {
        free(w.hash);
        free(w.rep);
        return bm_fail(err, BM_E_NOMEM, "out of memory writing the graph");
    }
    find_repeats(&w);
    if (fmt == BM_GRAPH_YAML)
        write_yaml(&w);
    else
        write_json(&w);
    free(w.hash);
    free(w.rep);
    if (!w.st && w.b.oom)
        w.st = bm_fail(err, BM_E_NOMEM, "out of memory writing the graph");
    if (w.st) {
        free(w.b.p);
        return w.st;
    }
    *out = w.b.p;
    if (len)
        *len = w.b.n;
    return BM_OK;
}
