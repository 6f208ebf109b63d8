"""
    Output

What a page prints becomes the response. [`ResponseIO`](@ref) is the `IO` a
page sees as `stdout`: it buffers into a reused byte vector and, at the end of
the request, turns the CGI output (header lines, a blank line, the body) into
FastCGI STDOUT records plus END_REQUEST, sent with one `write(2)`. Output past
[`STREAM_THRESHOLD`](@ref) is streamed as it comes, so a large page does not
sit in memory.
"""
module Output

using ..Posix
using ..FastCGI
using ..FastCGI: ByteBuf, add!, put_header!, put_padding!, padding, put_stream!,
                 put_empty!, put_end_request!, STREAM_CHUNK

"""Buffered output beyond this many bytes is sent right away (streaming)."""
const STREAM_THRESHOLD = 256 * 1024

const DEFAULT_CONTENT_TYPE = "Content-Type: text/html; charset=utf-8\r\n"
const CRLF = "\r\n"

"""
    ResponseIO(fd, rid)

The page's `stdout` for one request on connection `fd` (request id `rid`).
With `fd < 0` it only captures (used for output a page prints while it is
loaded, which goes to the log).
"""
mutable struct ResponseIO <: IO
    buf::Vector{UInt8}   # page output not sent yet
    len::Int
    fd::Cint             # the FastCGI connection, or -1: capture only
    rid::Int
    streamed::Bool       # the header block (and some body) has been sent
    broken::Bool         # the client went away: discard further output
    out::ByteBuf         # records being assembled for one write(2)
    hdr::ByteBuf         # the normalized header block
    err::String          # one FCGI_STDERR message for the web server's log
end

ResponseIO(fd::Integer=-1, rid::Integer=0) =
    ResponseIO(Vector{UInt8}(undef, 16 * 1024), 0, Cint(fd), Int(rid), false, false,
               ByteBuf(16 * 1024), ByteBuf(1024), "")

"""Prepare `io` for a new request (buffers are kept, oversized ones shrunk)."""
function reset!(io::ResponseIO, fd::Integer, rid::Integer)
    io.len = 0
    if length(io.buf) > 4 * STREAM_THRESHOLD
        io.buf = Vector{UInt8}(undef, 16 * 1024)
    end
    FastCGI.shrink!(FastCGI.reset!(io.out), 4 * STREAM_THRESHOLD)
    FastCGI.reset!(io.hdr)
    io.fd = Cint(fd)
    io.rid = Int(rid)
    io.streamed = false
    io.broken = false
    io.err = ""
    return io
end

# ------------------------------------------------------------- IO interface

@inline function reserve!(io::ResponseIO, n::Int)
    need = io.len + n
    if need > length(io.buf)
        resize!(io.buf, max(need, 2 * length(io.buf)))
    end
    return nothing
end

function Base.unsafe_write(io::ResponseIO, p::Ptr{UInt8}, n::UInt)
    m = Int(n)
    io.broken && return m
    reserve!(io, m)
    GC.@preserve io unsafe_copyto!(pointer(io.buf, io.len + 1), p, m)
    io.len += m
    io.len >= STREAM_THRESHOLD && io.fd >= 0 && stream!(io)
    return m
end

function Base.write(io::ResponseIO, x::UInt8)
    io.broken && return 1
    reserve!(io, 1)
    @inbounds io.buf[io.len += 1] = x
    io.len >= STREAM_THRESHOLD && io.fd >= 0 && stream!(io)
    return 1
end

Base.isopen(::ResponseIO) = true
Base.iswritable(::ResponseIO) = true
Base.isreadable(::ResponseIO) = false
# flush is deliberately a no-op: a page that flushes after every line would
# otherwise turn a small response into many writes. Output is sent at the
# end, or as soon as STREAM_THRESHOLD bytes are pending.
Base.flush(::ResponseIO) = nothing
# A page closing stdout must not break the response.
Base.close(::ResponseIO) = nothing

"""The captured output as a String (capture mode), emptying the buffer."""
function take_output!(io::ResponseIO)::String
    s = GC.@preserve io unsafe_string(pointer(io.buf), io.len)
    io.len = 0
    return s
end

"""Drop everything buffered (a page failed; an error response replaces it)."""
discard!(io::ResponseIO) = (io.len = 0; io)

# ------------------------------------------------------------- CGI headers

# RFC 7230 token characters, the only ones allowed in a header name.
const TOKEN = let t = falses(256)
    for c in UInt8('a'):UInt8('z'); t[c+1] = true; end
    for c in UInt8('A'):UInt8('Z'); t[c+1] = true; end
    for c in UInt8('0'):UInt8('9'); t[c+1] = true; end
    for c in "!#\$%&'*+-.^_`|~"; t[UInt8(c)+1] = true; end
    Tuple(t)
end

@inline istoken(b::UInt8) = @inbounds TOKEN[b + 1]

"""
    header_block(buf, len) -> (hdr_end, body_start)

Find the CGI header block at the start of `buf[1:len]`: lines `Name: value`
ending in `\\n` or `\\r\\n`, closed by a blank line. Returns the index of the
last byte before the blank line (0 for an empty block) and the first body
byte. When the output does not start with such a block, returns `(-1, 1)`:
all of it is body.
"""
function header_block(buf::Vector{UInt8}, len::Int)
    i = 1
    while i <= len
        nl = findnext(isequal(UInt8('\n')), buf, i)
        (nl === nothing || nl > len) && return (-1, 1)
        stop = (nl > i && @inbounds(buf[nl-1]) == UInt8('\r')) ? nl - 2 : nl - 1
        stop < i && return (i - 1, nl + 1)        # blank line: block complete
        valid_header_line(buf, i, stop) || return (-1, 1)
        i = nl + 1
    end
    return (-1, 1)
end

function valid_header_line(buf::Vector{UInt8}, first::Int, last::Int)::Bool
    j = first
    while j <= last && istoken(@inbounds buf[j])
        j += 1
    end
    return j > first && j <= last && @inbounds(buf[j]) == UInt8(':')
end

# ASCII case-insensitive comparison of buf[first:last] with a lowercase name.
function name_is(buf::Vector{UInt8}, first::Int, last::Int, lower::String)::Bool
    last - first + 1 == sizeof(lower) || return false
    for k in 0:(last - first)
        b = @inbounds buf[first+k]
        b = (UInt8('A') <= b <= UInt8('Z')) ? b + 0x20 : b
        b == codeunit(lower, k + 1) || return false
    end
    return true
end

"""
    normalize_headers!(hdr, buf, hdr_end)

Write the header block `buf[1:hdr_end]` to `hdr` as `Name: value\\r\\n` lines
(`Status:` is passed on: nginx understands it), add the default
`Content-Type` when the page gave none, and end with the blank line.
"""
function normalize_headers!(hdr::ByteBuf, buf::Vector{UInt8}, hdr_end::Int)
    FastCGI.reset!(hdr)
    has_type = false
    i = 1
    while i <= hdr_end
        nl = something(findnext(isequal(UInt8('\n')), buf, i), hdr_end + 1)
        stop = min(nl - 1, hdr_end)
        stop >= i && @inbounds(buf[stop]) == UInt8('\r') && (stop -= 1)
        colon = findnext(isequal(UInt8(':')), buf, i)::Int
        has_type |= name_is(buf, i, colon - 1, "content-type")
        v = colon + 1
        while v <= stop && (@inbounds(buf[v]) == UInt8(' ') || @inbounds(buf[v]) == UInt8('\t'))
            v += 1
        end
        GC.@preserve buf begin
            add!(hdr, pointer(buf, i), colon - i + 1)
            add!(hdr, UInt8(' '))
            add!(hdr, pointer(buf, v), stop - v + 1)
        end
        add!(hdr, CRLF)
        i = nl + 1
    end
    has_type || add!(hdr, DEFAULT_CONTENT_TYPE)
    add!(hdr, CRLF)
    return hdr
end

"""
    status_code(io) -> Int

The HTTP status of the response whose header block went out (for the access
log): the page's `Status:` header, else 302 with a `Location:` header (what
nginx answers to a CGI redirect), else 200.
"""
function status_code(io::ResponseIO)::Int
    hdr = io.hdr
    buf, len = hdr.data, hdr.len
    redirect = false
    i = 1
    while i <= len
        nl = something(findnext(isequal(UInt8('\n')), buf, i), len + 1)
        colon = findnext(isequal(UInt8(':')), buf, i)
        (colon === nothing || colon > nl) && break          # the blank line
        if name_is(buf, i, colon - 1, "status")
            code, k = 0, colon + 1
            while k < nl && buf[k] == UInt8(' ')
                k += 1
            end
            for j in k:min(k + 2, nl - 1)
                UInt8('0') <= buf[j] <= UInt8('9') || return 200
                code = 10code + (buf[j] - UInt8('0'))
            end
            return 100 <= code <= 999 ? code : 200
        end
        redirect |= name_is(buf, i, colon - 1, "location")
        i = nl + 1
    end
    return redirect ? 302 : 200
end

# ------------------------------------------------------------- records out

"""
    put_stdout!(out, rid, hdr, buf, first, last)

Append STDOUT records carrying the header block `hdr` followed by
`buf[first:last]`, filling each record from both so a small response is one
record.
"""
function put_stdout!(out::ByteBuf, rid::Int, hdr::ByteBuf, buf::Vector{UInt8},
                     first::Int, last::Int)
    a = hdr.len
    total = a + max(0, last - first + 1)
    off = 0
    GC.@preserve hdr buf while off < total
        m = min(STREAM_CHUNK, total - off)
        pad = padding(m)
        put_header!(out, FastCGI.STDOUT, rid, m, pad)
        k = off < a ? min(m, a - off) : 0
        k > 0 && add!(out, pointer(hdr.data, off + 1), k)
        k < m && add!(out, pointer(buf, first + max(0, off - a)), m - k)
        put_padding!(out, pad)
        off += m
    end
    return out
end

"""Append the records for everything buffered: header block first when it
has not been sent yet."""
function put_pending!(io::ResponseIO)
    if io.streamed
        io.len > 0 && GC.@preserve io put_stream!(io.out, FastCGI.STDOUT, io.rid,
                                                  pointer(io.buf), io.len)
    else
        hdr_end, body_start = header_block(io.buf, io.len)
        normalize_headers!(io.hdr, io.buf, max(hdr_end, 0))
        put_stdout!(io.out, io.rid, io.hdr, io.buf, body_start, io.len)
        io.streamed = true
    end
    io.len = 0
    return io
end

function send_out!(io::ResponseIO)::Bool
    io.broken && return false
    rc = Posix.write_all(io.fd, io.out.data, io.out.len)
    FastCGI.reset!(io.out)
    rc == 0 && return true
    io.broken = true        # EPIPE / ECONNRESET / timeout: the client is gone
    return false
end

"""Send what is buffered now (called when the buffer passes the threshold)."""
function stream!(io::ResponseIO)
    FastCGI.reset!(io.out)
    put_pending!(io)
    send_out!(io)
    return nothing
end

"""
    finish!(io, app_status) -> Bool

End the request: the FCGI_STDERR message if any, the pending output (with the
header block if nothing was streamed yet), the empty STDOUT record and
END_REQUEST — one `write(2)` for a small response. Returns `false` when the
client had gone away.
"""
function finish!(io::ResponseIO, app_status::Integer=0)::Bool
    FastCGI.reset!(io.out)
    if !isempty(io.err)
        put_stream!(io.out, FastCGI.STDERR, io.rid, io.err)
        put_empty!(io.out, FastCGI.STDERR, io.rid)
    end
    io.broken || put_pending!(io)
    put_empty!(io.out, FastCGI.STDOUT, io.rid)
    put_end_request!(io.out, io.rid, app_status)
    return send_out!(io)
end

"""
    error_response!(io, status, body, stderr_msg="")

Replace whatever the page printed by a plain-text error response (`status`
like `"404 Not Found"`), with an optional FCGI_STDERR message for nginx's
error log. Does nothing to the body when the headers were already streamed.
"""
function error_response!(io::ResponseIO, status::AbstractString, body::AbstractString,
                         stderr_msg::AbstractString="")
    io.err = String(stderr_msg)
    io.streamed && return io
    discard!(io)
    write(io, "Status: ", status, CRLF,
          "Content-Type: text/plain; charset=utf-8", CRLF, CRLF, body)
    return io
end

end # module Output
