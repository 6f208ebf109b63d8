"""
    Output

What a page prints becomes the response. [`ResponseIO`](@ref) assembles it:
the bytes the page writes through its `stdout` object (`Stdio.PageStdout`)
and, in their place among them, whatever else reached the page's fd 1 — child
processes, C `printf` — which lands in a memory file (`Stdio`) and is taken
in each time the page writes (see [`sync!`](@ref)). At the end of the
request the CGI output (header lines, a blank line, the body) becomes FastCGI
STDOUT records plus END_REQUEST, sent with one `sendmsg(2)`: the record
headers are assembled in `out`, and a large body goes to the kernel straight
from the page's buffer (one copy fewer, see [`Piece`](@ref)). Output past
[`STREAM_THRESHOLD`](@ref) is streamed as it comes, so a large page does not
sit in memory.
"""
module Output

using ..Posix
using ..Log
using ..FastCGI
using ..FastCGI: ByteBuf, add!, put_header!, put_padding!, padding, put_stream!,
                 put_empty!, put_end_request!, STREAM_CHUNK

"""Buffered output beyond this many bytes is sent right away (streaming)."""
const STREAM_THRESHOLD = 256 * 1024
"""`flush(stdout)` sends what is pending once the request has run this long
(a page that flushes after every line of a quick response stays one write)."""
const FLUSH_AFTER_NS = 20_000_000

const DEFAULT_CONTENT_TYPE = "Content-Type: text/html; charset=utf-8\r\n"
const CRLF = "\r\n"
const STATUS_302 = "Status: 302 Found\r\n"

"""
One part of a send: bytes of `io.out` (record headers, padding, small
bodies), or bytes of the page's buffer `io.buf` sent where they are. A body
slice of [`GATHER_MIN`](@ref) bytes or more is not copied into `out`; the
kernel takes it from `buf` (which nothing writes to before the send).
"""
struct Piece
    inbuf::Bool          # io.buf.data, else io.out.data
    off::Int             # 0-based offset there
    len::Int
end

"""Body bytes below this are copied next to their record header (one iovec
fewer is worth more than a copy that small)."""
const GATHER_MIN = 4096

"""
    ResponseIO(fd, rid)

The response of one request on connection `fd` (request id `rid`). With
`fd < 0` it only captures. `mfd` is the memory file that is the page's fd 1
(-1: none), `mseen` how much of it has been taken in.
"""
mutable struct ResponseIO <: IO
    buf::ByteBuf         # output not sent yet
    fd::Cint             # the FastCGI connection, or -1: capture only
    rid::Int
    mfd::Cint
    mseen::Int
    started::UInt64      # time_ns() at reset!: when flush() starts streaming
    streamed::Bool       # the header block (and some body) has been sent
    broken::Bool         # the client went away: discard further output
    out::ByteBuf         # records being assembled for one send
    pieces::Vector{Piece} # what the send is made of, in order, when it takes body bytes in place
    cut::Int             # bytes of `out` already covered by `pieces`
    iov::Vector{Posix.IOVec}  # the send's iovecs (reused)
    hdr::ByteBuf         # the normalized header block
    err::String          # one FCGI_STDERR message for the web server's log
    send_timeout_ms::Int # a client that reads nothing this long is gone (read_timeout)
end

ResponseIO(fd::Integer=-1, rid::Integer=0; send_timeout_ms::Int=10_000) =
    ResponseIO(ByteBuf(16 * 1024), Cint(fd), Int(rid), Cint(-1), 0, UInt64(0), false, false,
               ByteBuf(16 * 1024), Piece[], 0, Posix.IOVec[], ByteBuf(1024), "",
               send_timeout_ms)

"""Prepare `io` for a new request (buffers are kept, oversized ones shrunk).
`mfd`/`mseen`: the page's fd 1 file and how much of it is old news."""
function reset!(io::ResponseIO, fd::Integer, rid::Integer; mfd::Integer=-1, mseen::Integer=0)
    FastCGI.shrink!(FastCGI.reset!(io.buf), 4 * STREAM_THRESHOLD)
    FastCGI.shrink!(clear_out!(io).out, 4 * STREAM_THRESHOLD)
    FastCGI.reset!(io.hdr)
    io.fd = Cint(fd)
    io.rid = Int(rid)
    io.mfd = Cint(mfd)
    io.mseen = Int(mseen)
    io.started = time_ns()
    io.streamed = false
    io.broken = false
    io.err = ""
    return io
end

# ------------------------------------------------------------- page output

"""
    sync!(io)

Take in what others (child processes, C stdio) wrote to the page's fd 1
since the last look, in its place: after everything the page printed
before. One `lseek(2)`; called before each of the page's writes (each
`print` call), before a child is given the page's stdout, and at the end.
"""
@inline function sync!(io::ResponseIO)
    io.mfd < 0 && return nothing
    size = Posix.file_end(io.mfd)
    size > io.mseen && absorb!(io, size)
    return nothing
end

function absorb!(io::ResponseIO, size::Int)
    n = size - io.mseen
    b = io.buf
    FastCGI.reserve!(b, n)
    got = GC.@preserve b Posix.pread_all(io.mfd, pointer(b.data, b.len + 1), n, io.mseen)
    got > 0 && (b.len += got)
    io.mseen = size
    maybe_stream!(io)
    return nothing
end

"""The page's own bytes, after whatever reached its fd 1 before them."""
function page_write!(io::ResponseIO, p::Ptr{UInt8}, n::Int, check::Bool)
    check && sync!(io)
    io.broken && return n
    add!(io.buf, p, n)
    maybe_stream!(io)
    return n
end

function page_write!(io::ResponseIO, x::UInt8, check::Bool)
    check && sync!(io)
    io.broken && return 1
    add!(io.buf, x)
    maybe_stream!(io)
    return 1
end

@inline maybe_stream!(io::ResponseIO) =
    (io.buf.len >= STREAM_THRESHOLD && io.fd >= 0 && stream!(io); nothing)

"""
    page_flush!(io)

`flush(stdout)` of a page: send what is pending when the request has run for
[`FLUSH_AFTER_NS`](@ref) (a long response streams; a quick page that
flushes often stays one write).
"""
function page_flush!(io::ResponseIO)
    sync!(io)
    if io.fd >= 0 && !io.broken && io.buf.len > 0 && time_ns() - io.started >= FLUSH_AFTER_NS
        stream!(io)
    end
    return nothing
end

# The worker's own writes into the response (error pages, tests).
function Base.unsafe_write(io::ResponseIO, p::Ptr{UInt8}, n::UInt)
    io.broken && return Int(n)
    add!(io.buf, p, Int(n))
    maybe_stream!(io)
    return Int(n)
end

function Base.write(io::ResponseIO, x::UInt8)
    io.broken && return 1
    add!(io.buf, x)
    maybe_stream!(io)
    return 1
end

Base.isopen(::ResponseIO) = true
Base.iswritable(::ResponseIO) = true
Base.isreadable(::ResponseIO) = false
Base.flush(::ResponseIO) = nothing
Base.close(::ResponseIO) = nothing

"""The captured output as a String (capture mode), emptying the buffer."""
function take_output!(io::ResponseIO)::String
    b = io.buf
    s = GC.@preserve b unsafe_string(pointer(b.data), b.len)
    b.len = 0
    return s
end

"""Drop everything buffered (a page failed; an error response replaces it),
including what others wrote to the page's fd 1 so far."""
function discard!(io::ResponseIO)
    io.mfd >= 0 && (io.mseen = max(io.mseen, Posix.file_end(io.mfd)))
    FastCGI.reset!(io.buf)
    return io
end

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
(`Status:` is passed on: every front end understands it), add the default
`Content-Type` when the page gave none and `Status: 302 Found` when it gave
a `Location:` without a `Status:` (a CGI redirect: nginx makes it a 302
itself, Apache and HAProxy would answer 200 with an empty body), and end
with the blank line.
"""
function normalize_headers!(hdr::ByteBuf, buf::Vector{UInt8}, hdr_end::Int)
    FastCGI.reset!(hdr)
    has_type = has_status = has_location = false
    i = 1
    while i <= hdr_end
        nl = something(findnext(isequal(UInt8('\n')), buf, i), hdr_end + 1)
        stop = min(nl - 1, hdr_end)
        stop >= i && @inbounds(buf[stop]) == UInt8('\r') && (stop -= 1)
        colon = findnext(isequal(UInt8(':')), buf, i)::Int
        has_type |= name_is(buf, i, colon - 1, "content-type")
        has_status |= name_is(buf, i, colon - 1, "status")
        has_location |= name_is(buf, i, colon - 1, "location")
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
    has_location && !has_status && add!(hdr, STATUS_302)
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
    put_stdout!(io, body_start)

Append STDOUT records carrying the normalized header block `io.hdr` followed
by the body `io.buf.data[body_start:io.buf.len]`, filling each record from
both so a small response is one record.
"""
function put_stdout!(io::ResponseIO, body_start::Int)
    out, hdr, rid = io.out, io.hdr, io.rid
    a = hdr.len
    total = a + max(0, io.buf.len - body_start + 1)
    off = 0
    GC.@preserve hdr while off < total
        m = min(STREAM_CHUNK, total - off)
        pad = padding(m)
        put_header!(out, FastCGI.STDOUT, rid, m, pad)
        k = off < a ? min(m, a - off) : 0
        k > 0 && add!(out, pointer(hdr.data, off + 1), k)
        k < m && put_body!(io, body_start + max(0, off - a), m - k)
        put_padding!(out, pad)
        off += m
    end
    return io
end

"""STDOUT records for `io.buf.data[first:first+n-1]` (the streamed case)."""
function put_streamed!(io::ResponseIO, first::Int, n::Int)
    off = 0
    while off < n
        m = min(STREAM_CHUNK, n - off)
        pad = padding(m)
        put_header!(io.out, FastCGI.STDOUT, io.rid, m, pad)
        put_body!(io, first + off, m)
        put_padding!(io.out, pad)
        off += m
    end
    return io
end

"""`n` body bytes from `io.buf.data[first]` on: copied into `out` when few,
else a piece of their own (sent in place)."""
function put_body!(io::ResponseIO, first::Int, n::Int)
    if n < GATHER_MIN
        d = io.buf.data
        GC.@preserve d add!(io.out, pointer(d, first), n)
    else
        cut!(io)
        push!(io.pieces, Piece(true, first - 1, n))
    end
    return nothing
end

"""Nothing assembled for a send."""
clear_out!(io::ResponseIO) = (FastCGI.reset!(io.out); empty!(io.pieces); io.cut = 0; io)

"""What `out` holds past the pieces so far becomes a piece."""
function cut!(io::ResponseIO)
    n = io.out.len - io.cut
    n > 0 && push!(io.pieces, Piece(false, io.cut, n))
    io.cut = io.out.len
    return nothing
end

"""Append the records for everything buffered: header block first when it
has not been sent yet."""
function put_pending!(io::ResponseIO)
    b = io.buf
    if io.streamed
        b.len > 0 && put_streamed!(io, 1, b.len)
    else
        hdr_end, body_start = header_block(b.data, b.len)
        normalize_headers!(io.hdr, b.data, max(hdr_end, 0))
        put_stdout!(io, body_start)
        io.streamed = true
    end
    b.len = 0        # its bytes stay where they are until the send
    return io
end

function send_out!(io::ResponseIO)::Bool
    io.broken && (clear_out!(io); return false)
    rc = isempty(io.pieces) ?
        Posix.write_all(io.fd, io.out.data, io.out.len; nonblocking=true,
                        timeout_ms=io.send_timeout_ms) :
        send_pieces!(io)
    clear_out!(io)
    rc == 0 && return true
    io.broken = true        # EPIPE / ECONNRESET / timeout: the client is gone
    rc == Posix.EAGAIN &&
        Log.info("closing FastCGI connection: the front end read none of the response for " *
                 "$(io.send_timeout_ms) ms (read_timeout); the rest is discarded")
    return false
end

"""One gathered send of the pieces (`out`'s tail included)."""
function send_pieces!(io::ResponseIO)::Cint
    cut!(io)
    iov, out, buf = io.iov, io.out.data, io.buf.data
    resize!(iov, length(io.pieces))
    GC.@preserve out buf begin
        for (i, p) in enumerate(io.pieces)
            base = p.inbuf ? pointer(buf, p.off + 1) : pointer(out, p.off + 1)
            @inbounds iov[i] = Posix.IOVec(base, p.len)
        end
        return Posix.writev_all(io.fd, iov; nonblocking=true, timeout_ms=io.send_timeout_ms)
    end
end

"""Send what is buffered now (called when the buffer passes the threshold)."""
function stream!(io::ResponseIO)
    clear_out!(io)
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
    sync!(io)
    clear_out!(io)
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
    io.mfd = Cint(-1)          # nothing more of the page's fd 1 belongs in it
    write(io, "Status: ", status, CRLF,
          "Content-Type: text/plain; charset=utf-8", CRLF, CRLF, body)
    return io
end

end # module Output
