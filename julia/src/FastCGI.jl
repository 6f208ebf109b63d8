"""
    FastCGI

The FastCGI 1.0 wire format (https://fastcgi-archives.github.io/FastCGI_Specification.html):
record types and status codes as constants, the 8-byte record header (its
one decoder, [`decode_header`](@ref)), name-value pairs, and builders that
append whole records to a reusable [`ByteBuf`](@ref). No I/O happens here;
`Connection` moves the bytes.
"""
module FastCGI

const VERSION_1 = 0x01
const HEADER_LEN = 8
const MAX_CONTENT = 65535
# Stream payload per record: the largest multiple of 8 below 65535, so full
# records need no padding and only the last one of a stream is padded.
const STREAM_CHUNK = 65528

# Record types.
const BEGIN_REQUEST     = 0x01
const ABORT_REQUEST     = 0x02
const END_REQUEST       = 0x03
const PARAMS            = 0x04
const STDIN             = 0x05
const STDOUT            = 0x06
const STDERR            = 0x07
const DATA              = 0x08
const GET_VALUES        = 0x09
const GET_VALUES_RESULT = 0x0a
const UNKNOWN_TYPE      = 0x0b

# Roles (BEGIN_REQUEST body) and its flag.
const RESPONDER  = 1
const AUTHORIZER = 2
const FILTER     = 3
const KEEP_CONN  = 0x01

# END_REQUEST protocolStatus.
const REQUEST_COMPLETE = 0x00
const CANT_MPX_CONN    = 0x01
const OVERLOADED       = 0x02
const UNKNOWN_ROLE     = 0x03

# GET_VALUES variables and this worker's answers: one connection, one request
# at a time, no multiplexing (the worker pool provides the concurrency).
const MAX_CONNS  = "FCGI_MAX_CONNS"
const MAX_REQS   = "FCGI_MAX_REQS"
const MPXS_CONNS = "FCGI_MPXS_CONNS"
const VALUES = Dict(MAX_CONNS => "1", MAX_REQS => "1", MPXS_CONNS => "0")

"""
    ByteBuf

A growable byte buffer that is reused between requests: `len` bytes of `data`
are valid; `reset!` keeps the capacity, so steady-state responses allocate
nothing.
"""
mutable struct ByteBuf
    data::Vector{UInt8}
    len::Int
end

ByteBuf(capacity::Integer=4096) = ByteBuf(Vector{UInt8}(undef, capacity), 0)

reset!(b::ByteBuf) = (b.len = 0; b)

"""Make room for `n` more bytes (amortized doubling)."""
@inline function reserve!(b::ByteBuf, n::Int)
    need = b.len + n
    if need > length(b.data)
        resize!(b.data, max(need, 2 * length(b.data)))
    end
    return b
end

@inline function add!(b::ByteBuf, x::UInt8)
    reserve!(b, 1)
    @inbounds b.data[b.len += 1] = x
    return b
end

function add!(b::ByteBuf, p::Ptr{UInt8}, n::Int)
    n <= 0 && return b
    reserve!(b, n)
    GC.@preserve b unsafe_copyto!(pointer(b.data, b.len + 1), p, n)
    b.len += n
    return b
end

add!(b::ByteBuf, s::Union{String,Vector{UInt8}}) =
    GC.@preserve s add!(b, pointer(s), sizeof(s))

"""Replace an empty buffer's backing array after an unusually large request, so one big
response does not pin its memory for the life of the worker."""
function shrink!(b::ByteBuf, keep::Int)
    if length(b.data) > keep && b.len == 0
        b.data = Vector{UInt8}(undef, keep)
    end
    return b
end

"""View of the valid bytes (for tests and callers that copy them)."""
bytes(b::ByteBuf) = view(b.data, 1:b.len)

# ---------------------------------------------------------------- records

"""
    Header

A record header as it is on the wire: version, type, request id, content
and padding lengths ([`decode_header`](@ref); a plain value, never
allocated).
"""
struct Header
    version::UInt8
    type::UInt8
    rid::Int
    clen::Int
    plen::Int
end

Header() = Header(0x00, 0x00, 0, 0, 0)

"""The whole record's length: header, content and padding."""
record_len(h::Header) = HEADER_LEN + h.clen + h.plen

"""
    decode_header(d, i) -> Header

Decode the record header in `d[i:i+7]` (the caller has checked that those
8 bytes are there). The version byte is returned, not checked.
"""
@inline function decode_header(d::AbstractVector{UInt8}, i::Int)
    @inbounds return Header(d[i], d[i+1], (Int(d[i+2]) << 8) | Int(d[i+3]),
                            (Int(d[i+4]) << 8) | Int(d[i+5]), Int(d[i+6]))
end

"""
    head_complete(d, first, last) -> Bool

Do the bytes `d[first:last]`, the start of a connection, hold a whole
request head: its records up to the end of the params (the empty PARAMS
record)? Also true at the first whole record that is anything but
BEGIN_REQUEST or PARAMS with content (a management record, STDIN…) and at a
byte that cannot start a FastCGI 1 record: what follows is for the request
reader to act on or to refuse. False while a record is incomplete. Only
walks record headers; nginx's request is three of them.
"""
function head_complete(d::Vector{UInt8}, first::Int, last::Int)::Bool
    i = first
    while i <= last
        @inbounds d[i] == VERSION_1 || return true
        i + HEADER_LEN - 1 <= last || return false
        h = decode_header(d, i)
        i + record_len(h) - 1 <= last || return false
        (h.type == BEGIN_REQUEST || (h.type == PARAMS && h.clen > 0)) || return true
        i += record_len(h)
    end
    return false
end

"""Append a record header."""
@inline function put_header!(b::ByteBuf, typ::UInt8, rid::Int, clen::Int, plen::Int)
    reserve!(b, HEADER_LEN)
    d = b.data
    i = b.len
    @inbounds begin
        d[i+1] = VERSION_1
        d[i+2] = typ
        d[i+3] = (rid >> 8) % UInt8
        d[i+4] = rid % UInt8
        d[i+5] = (clen >> 8) % UInt8
        d[i+6] = clen % UInt8
        d[i+7] = plen % UInt8
        d[i+8] = 0x00
    end
    b.len = i + HEADER_LEN
    return b
end

@inline padding(n::Int) = (8 - (n & 7)) & 7

function put_padding!(b::ByteBuf, n::Int)
    for _ in 1:n
        add!(b, 0x00)
    end
    return b
end

"""
    put_record!(b, typ, rid, p, n)

Append one record carrying `n ≤ 65535` bytes from `p`, padded to 8 bytes.
"""
function put_record!(b::ByteBuf, typ::UInt8, rid::Int, p::Ptr{UInt8}, n::Int)
    @assert 0 <= n <= MAX_CONTENT
    pad = padding(n)
    put_header!(b, typ, rid, n, pad)
    add!(b, p, n)
    put_padding!(b, pad)
    return b
end

put_record!(b::ByteBuf, typ::UInt8, rid::Int, s::Union{String,Vector{UInt8}}) =
    GC.@preserve s put_record!(b, typ, rid, pointer(s), sizeof(s))

"""Append an empty record: the end of a stream (STDOUT, STDERR)."""
put_empty!(b::ByteBuf, typ::UInt8, rid::Int) = put_header!(b, typ, rid, 0, 0)

"""
    put_stream!(b, typ, rid, p, n)

Append `n` bytes as a sequence of stream records (STDOUT/STDERR) of at most
[`STREAM_CHUNK`](@ref) bytes each. Appends nothing when `n == 0` (an empty
record would end the stream).
"""
function put_stream!(b::ByteBuf, typ::UInt8, rid::Int, p::Ptr{UInt8}, n::Int)
    off = 0
    while off < n
        m = min(STREAM_CHUNK, n - off)
        put_record!(b, typ, rid, p + off, m)
        off += m
    end
    return b
end

put_stream!(b::ByteBuf, typ::UInt8, rid::Int, s::Union{String,Vector{UInt8}}) =
    GC.@preserve s put_stream!(b, typ, rid, pointer(s), sizeof(s))

"""Append END_REQUEST with `app_status` and `protocol_status`."""
function put_end_request!(b::ByteBuf, rid::Int, app_status::Integer,
                          protocol_status::UInt8=REQUEST_COMPLETE)
    put_header!(b, END_REQUEST, rid, 8, 0)
    a = UInt32(app_status & 0xffffffff)
    add!(b, (a >> 24) % UInt8); add!(b, (a >> 16) % UInt8)
    add!(b, (a >> 8) % UInt8);  add!(b, a % UInt8)
    add!(b, protocol_status); add!(b, 0x00); add!(b, 0x00); add!(b, 0x00)
    return b
end

"""Append UNKNOWN_TYPE for a management record of type `typ`."""
function put_unknown_type!(b::ByteBuf, typ::UInt8)
    put_header!(b, UNKNOWN_TYPE, 0, 8, 0)
    add!(b, typ)
    for _ in 1:7
        add!(b, 0x00)
    end
    return b
end

"""Append BEGIN_REQUEST (used by the warm-up client and the tests)."""
function put_begin_request!(b::ByteBuf, rid::Int, role::Int=RESPONDER, flags::UInt8=KEEP_CONN)
    put_header!(b, BEGIN_REQUEST, rid, 8, 0)
    add!(b, (role >> 8) % UInt8); add!(b, role % UInt8); add!(b, flags)
    for _ in 1:5
        add!(b, 0x00)
    end
    return b
end

# ---------------------------------------------------------- name-value pairs

"""Append one name-value pair with 1- or 4-byte lengths as needed."""
function put_pair!(b::ByteBuf, name::AbstractString, value::AbstractString)
    put_length!(b, sizeof(name))
    put_length!(b, sizeof(value))
    add!(b, String(name))
    add!(b, String(value))
    return b
end

function put_length!(b::ByteBuf, n::Int)
    if n < 0x80
        add!(b, n % UInt8)
    else
        add!(b, ((n >> 24) % UInt8) | 0x80); add!(b, (n >> 16) % UInt8)
        add!(b, (n >> 8) % UInt8);           add!(b, n % UInt8)
    end
    return b
end

"""
    read_length(d, i, last) -> (length, next index), or (-1, i) when the
length field itself runs past `last`.
"""
@inline function read_length(d::Vector{UInt8}, i::Int, last::Int)
    i > last && return (-1, i)
    x = @inbounds d[i]
    x < 0x80 && return (Int(x), i + 1)
    i + 3 > last && return (-1, i)
    n = (Int(x & 0x7f) << 24) | (Int(@inbounds d[i+1]) << 16) |
        (Int(@inbounds d[i+2]) << 8) | Int(@inbounds d[i+3])
    return (n, i + 4)
end

"""
    parse_pairs!(out, d, first, last) -> Bool

Decode the name-value pairs in `d[first:last]` into `out`. Returns `false`
when a length runs past the end (a malformed or hostile stream). PARAMS
records are concatenated before decoding, so a pair split across records is
no special case.
"""
function parse_pairs!(out::Dict{String,String}, d::Vector{UInt8}, first::Int, last::Int)::Bool
    i = first
    while i <= last
        nl, i = read_length(d, i, last)
        nl < 0 && return false
        vl, i = read_length(d, i, last)
        vl < 0 && return false
        (nl > last - i + 1 || vl > last - i + 1 - nl) && return false
        name = GC.@preserve d unsafe_string(pointer(d, i), nl)
        i += nl
        value = GC.@preserve d unsafe_string(pointer(d, i), vl)
        i += vl
        out[name] = value
    end
    return true
end

"""
    values_result!(b, d, first, last) -> Bool

Answer a GET_VALUES record whose content is `d[first:last]`: a
GET_VALUES_RESULT with the values of the names asked for that this worker
knows (unknown names are left out, as the specification says).
"""
function values_result!(b::ByteBuf, d::Vector{UInt8}, first::Int, last::Int)::Bool
    asked = Dict{String,String}()
    parse_pairs!(asked, d, first, last) || return false
    body = ByteBuf(64)
    for name in sort!(collect(keys(asked)))
        v = get(VALUES, name, nothing)
        v === nothing || put_pair!(body, name, v)
    end
    GC.@preserve body put_record!(b, GET_VALUES_RESULT, 0, pointer(body.data), body.len)
    return true
end

# ------------------------------------------------------------ client side
# What a web server does: used by the warm-up (which sends itself real
# requests) and by the tests.

"""
    put_request!(b, rid, params, body; keep=true)

Append a whole RESPONDER request: BEGIN_REQUEST, the params (then the empty
PARAMS record), the body as STDIN records (then the empty STDIN record).
"""
function put_request!(b::ByteBuf, rid::Int, params, body::Union{String,Vector{UInt8}}=UInt8[];
                      keep::Bool=true)
    put_begin_request!(b, rid, RESPONDER, keep ? KEEP_CONN : 0x00)
    p = ByteBuf(1024)
    for (k, v) in params
        put_pair!(p, k, v)
    end
    GC.@preserve p put_stream!(b, PARAMS, rid, pointer(p.data), p.len)
    put_empty!(b, PARAMS, rid)
    put_stream!(b, STDIN, rid, body)
    put_empty!(b, STDIN, rid)
    return b
end

"""A decoded record: type, request id, content."""
struct Record
    type::UInt8
    rid::Int
    content::Vector{UInt8}
end

"""
    decode_records(bytes) -> (records, rest)

Split a byte stream into whole records; `rest` is the number of trailing
bytes that do not form a whole record.
"""
function decode_records(d::AbstractVector{UInt8})
    recs = Record[]
    i = firstindex(d)
    n = lastindex(d)
    while i + HEADER_LEN - 1 <= n
        h = decode_header(d, i)
        i + record_len(h) - 1 <= n || break
        push!(recs, Record(h.type, h.rid, Vector{UInt8}(d[i+HEADER_LEN:i+HEADER_LEN+h.clen-1])))
        i += record_len(h)
    end
    return recs, n - i + 1
end

end # module FastCGI
