"""
    Connection

The connection layer: one FastCGI connection's socket, its read buffer, the
record being read, and sending. Reads never block: when no byte is there,
the connection's owner decides how long to wait ([`wait_input`](@ref)), so
this layer knows nothing of requests, deadlines or kept connections. The
record header is decoded by `FastCGI.decode_header`, the one decoder.
"""
module Connection

using ..Posix
using ..FastCGI
using ..FastCGI: ByteBuf, Header

const READ_BUF = 128 * 1024        # > one maximal record (8 + 65535 + 255)

"""What reading came to."""
@enum ReadStatus begin
    READ_OK
    READ_EOF          # clean end of file between records
    READ_TRUNCATED    # end of file inside a record
    READ_TIMEOUT      # a deadline passed (the owner knows which)
    READ_STOP         # told to stop while the connection was idle
    READ_ERROR        # recv(2) failed (ECONNRESET…)
    READ_VERSION      # not a FastCGI 1 record
    READ_YIELD        # idle kept connection given up for a waiting one
end

"""
    Conn

One connection: its fd, the read buffer (`buf[head:tail]` not consumed
yet, reused for every connection) and the current record (`rec`, its
content at `buf[cstart:cstart+rec.clen-1]`, `rlen` bytes in all).
Sends never block either: a peer that reads nothing for `send_timeout_ms`
(the worker's read_timeout) is given up.
"""
mutable struct Conn
    fd::Cint
    buf::Vector{UInt8}
    head::Int
    tail::Int
    rec::Header
    cstart::Int
    rlen::Int
    send_timeout_ms::Int
end

Conn(send_timeout_ms::Int=10_000) =
    Conn(Cint(-1), Vector{UInt8}(undef, READ_BUF), 1, 0, Header(), 0, 0, send_timeout_ms)

"""Start on connection `fd` with an empty buffer."""
function reset!(c::Conn, fd::Cint)
    c.fd = fd
    c.head = 1
    c.tail = 0
    return c
end

"""Start on connection `fd` with `bytes` already read from it."""
function reset!(c::Conn, fd::Cint, bytes::Vector{UInt8})
    reset!(c, fd)
    copyto!(c.buf, 1, bytes, 1, length(bytes))
    c.tail = length(bytes)
    return c
end

buffered(c::Conn) = c.tail - c.head + 1

"""The bytes read but not consumed, as a new vector."""
unconsumed(c::Conn) = c.buf[c.head:c.tail]

"""
    wait_input(owner, c) -> ReadStatus

Called when `c` has nothing to read: wait until it may have (`READ_OK`, and
the read is tried again) or give up (any other status, returned by the
read). Each owner of connections defines its method.
"""
function wait_input end

"""
    recv_some!(c, max=room) -> bytes read, 0 at end of file, -errno (-EAGAIN: nothing there)

Append what the socket has (at most `max` bytes) to the buffer, without
blocking.
"""
function recv_some!(c::Conn, max::Int=length(c.buf) - c.tail)::Int
    buf = c.buf
    n = min(max, length(buf) - c.tail)
    while true
        r = GC.@preserve buf ccall(:recv, Cssize_t, (Cint, Ptr{UInt8}, Csize_t, Cint),
                                   c.fd, pointer(buf, c.tail + 1), n, Posix.MSG_DONTWAIT)
        if r > 0
            c.tail += Int(r)
            return Int(r)
        end
        r == 0 && return 0
        e = Posix.errno()
        e == Posix.EINTR || return -Int(e)
    end
end

"""Move the unconsumed bytes to the front of the buffer."""
function compact!(c::Conn)
    n = buffered(c)
    n > 0 && c.head > 1 && copyto!(c.buf, 1, c.buf, c.head, n)
    c.head = 1
    c.tail = n
    return c
end

"""Make sure `need` bytes are buffered, reading (and waiting) as needed."""
function ensure!(owner, c::Conn, need::Int)::ReadStatus
    while buffered(c) < need
        c.head + need - 1 > length(c.buf) && compact!(c)
        n = recv_some!(c)
        n > 0 && continue
        n == 0 && return buffered(c) == 0 ? READ_EOF : READ_TRUNCATED
        n == -Int(Posix.EAGAIN) || return READ_ERROR
        st = wait_input(owner, c)
        st == READ_OK || return st
    end
    return READ_OK
end

"""Read the next whole record into the buffer and decode its header."""
function read_record!(owner, c::Conn)::ReadStatus
    st = ensure!(owner, c, FastCGI.HEADER_LEN)
    st == READ_OK || return st
    h = FastCGI.decode_header(c.buf, c.head)
    h.version == FastCGI.VERSION_1 || return READ_VERSION
    c.rec = h
    c.rlen = FastCGI.record_len(h)
    st = ensure!(owner, c, c.rlen)
    st == READ_OK || return st == READ_EOF ? READ_TRUNCATED : st
    c.cstart = c.head + FastCGI.HEADER_LEN
    return READ_OK
end

"""The current record has been handled."""
consume!(c::Conn) = (c.head += c.rlen; c)

"""Send `b` on the connection and empty it; false when the peer is gone (or
read nothing for `c.send_timeout_ms`)."""
function send!(c::Conn, b::ByteBuf)::Bool
    rc = Posix.write_all(c.fd, b.data, b.len; nonblocking=true, timeout_ms=c.send_timeout_ms)
    FastCGI.reset!(b)
    return rc == 0
end

end # module Connection
