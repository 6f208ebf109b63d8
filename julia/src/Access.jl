"""
    Access

The access log's worker side (INTERFACE.md, `ACCESS`): one line per answered
request, sent to the master on the control channel when
`JULIA_FCGI_ACCESS_LOG=1`.

Lines are batched: a busy worker appends them to one buffer and sends it
when it holds [`BATCH`](@ref) entries or its oldest entry is
[`MAX_DELAY_NS`](@ref) old, and an idle worker sends what it has once it has
been idle for a moment (`Server.idle_poll`). So a worker under load pays one
`send(2)` per batch instead of one per request, and the master wakes up once
per batch. The price: an entry reaches the journal up to 50 ms after its
response, and a worker killed outright (SIGKILL, the OOM killer) takes the
entries it had not sent yet with it.
"""
module Access

using ..Posix
using ..Control
using ..FastCGI
using ..FastCGI: ByteBuf, add!

"""Entries sent together at the most."""
const BATCH = 64
"""A waiting entry goes out after this long even while the worker is busy."""
const MAX_DELAY_NS = UInt64(50_000_000)

mutable struct Pending
    out::ByteBuf        # the waiting lines
    count::Int
    oldest::UInt64      # time_ns() of the first waiting entry
end

Pending() = Pending(ByteBuf(16 * 1024), 0, UInt64(0))

const PENDING = Pending()

"""A field, escaped as INTERFACE.md says. Byte by byte: the four escaped
bytes never occur inside a UTF-8 sequence."""
function put_field!(b::ByteBuf, s::AbstractString)
    for c in codeunits(s)
        if c == UInt8('\\')
            add!(b, c); add!(b, c)
        elseif c == UInt8('\n')
            add!(b, UInt8('\\')); add!(b, UInt8('n'))
        elseif c == UInt8('\r')
            add!(b, UInt8('\\')); add!(b, UInt8('r'))
        elseif c == UInt8('\t')
            add!(b, UInt8('\\')); add!(b, UInt8('t'))
        else
            add!(b, c)
        end
    end
    return nothing
end

"""A non-negative integer in decimal, without allocating."""
function put_int!(b::ByteBuf, n::Integer)
    n = UInt64(max(n, 0))
    first = b.len + 1
    while true
        add!(b, UInt8('0') + UInt8(n % 10))
        n ÷= 10
        n == 0 && break
    end
    reverse!(b.data, first, b.len)
    return nothing
end

"""Append one `ACCESS` line (with its newline) to `p`."""
function add_entry!(p::Pending, method::AbstractString, uri::AbstractString, status::Integer,
                 duration_us::Integer, remote_addr::AbstractString)
    b = p.out
    add!(b, "ACCESS\t")
    put_field!(b, method); add!(b, UInt8('\t'))
    put_field!(b, uri); add!(b, UInt8('\t'))
    put_int!(b, status); add!(b, UInt8('\t'))
    put_int!(b, duration_us); add!(b, UInt8('\t'))
    put_field!(b, remote_addr)
    add!(b, UInt8('\n'))
    p.count += 1
    return nothing
end

"""One entry as its `ACCESS` line, without the newline (tests, warm-up)."""
function line(method::AbstractString, uri::AbstractString, status::Integer,
              duration_us::Integer, remote_addr::AbstractString)::String
    p = Pending()
    add_entry!(p, method, uri, status, duration_us, remote_addr)
    return String(p.out.data[1:p.out.len-1])
end

"""
    record(method, uri, status, duration_us, remote_addr, now)

Queue the entry of a request answered at `now` (`time_ns()`); send the batch
if it is full or old enough. Without a master (standalone) there is nobody
to send it to, and nothing is kept.
"""
function record(method::AbstractString, uri::AbstractString, status::Integer,
                duration_us::Integer, remote_addr::AbstractString, now::UInt64)
    Control.active() || return nothing
    p = PENDING
    p.count == 0 && (p.oldest = now)
    add_entry!(p, method, uri, status, duration_us, remote_addr)
    (p.count >= BATCH || now - p.oldest >= MAX_DELAY_NS) && flush!()
    return nothing
end

"""Are entries waiting?"""
pending() = PENDING.count > 0

"""Send the waiting entries now (the worker is idle or leaving)."""
function flush!()
    p = PENDING
    b = p.out
    b.len == 0 && return nothing
    Control.active() && Posix.write_all(Control.CHAN.fd, b.data, b.len; timeout_ms=2_000)
    FastCGI.shrink!(FastCGI.reset!(b), 64 * 1024)
    p.count = 0
    return nothing
end

end # module Access
