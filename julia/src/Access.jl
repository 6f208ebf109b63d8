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

"""Entries sent together at the most."""
const BATCH = 64
"""A waiting entry goes out after this long even while the worker is busy."""
const MAX_DELAY_NS = UInt64(50_000_000)

mutable struct Pending
    buf::Vector{UInt8}
    len::Int
    count::Int
    oldest::UInt64      # time_ns() of the first waiting entry
end

Pending() = Pending(Vector{UInt8}(undef, 16 * 1024), 0, 0, UInt64(0))

const PENDING = Pending()

@inline function putb!(p::Pending, b::UInt8)
    p.len == length(p.buf) && resize!(p.buf, 2 * length(p.buf))
    @inbounds p.buf[p.len+1] = b
    p.len += 1
    return nothing
end

"""A field, escaped as INTERFACE.md says. Byte by byte: the four escaped
bytes never occur inside a UTF-8 sequence."""
function put_field!(p::Pending, s::AbstractString)
    for b in codeunits(s)
        if b == UInt8('\\')
            putb!(p, b); putb!(p, b)
        elseif b == UInt8('\n')
            putb!(p, UInt8('\\')); putb!(p, UInt8('n'))
        elseif b == UInt8('\r')
            putb!(p, UInt8('\\')); putb!(p, UInt8('r'))
        elseif b == UInt8('\t')
            putb!(p, UInt8('\\')); putb!(p, UInt8('t'))
        else
            putb!(p, b)
        end
    end
    return nothing
end

"""A non-negative integer in decimal, without allocating."""
function put_int!(p::Pending, n::Integer)
    n = UInt64(max(n, 0))
    first = p.len + 1
    while true
        putb!(p, UInt8('0') + UInt8(n % 10))
        n ÷= 10
        n == 0 && break
    end
    reverse!(p.buf, first, p.len)
    return nothing
end

"""Append one `ACCESS` line (with its newline) to `p`."""
function add_entry!(p::Pending, method::AbstractString, uri::AbstractString, status::Integer,
                 duration_us::Integer, remote_addr::AbstractString)
    for b in codeunits("ACCESS\t")
        putb!(p, b)
    end
    put_field!(p, method); putb!(p, UInt8('\t'))
    put_field!(p, uri); putb!(p, UInt8('\t'))
    put_int!(p, status); putb!(p, UInt8('\t'))
    put_int!(p, duration_us); putb!(p, UInt8('\t'))
    put_field!(p, remote_addr)
    putb!(p, UInt8('\n'))
    p.count += 1
    return nothing
end

"""One entry as its `ACCESS` line, without the newline (tests, warm-up)."""
function line(method::AbstractString, uri::AbstractString, status::Integer,
              duration_us::Integer, remote_addr::AbstractString)::String
    p = Pending()
    add_entry!(p, method, uri, status, duration_us, remote_addr)
    return String(p.buf[1:p.len-1])
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
    p.len == 0 && return nothing
    Control.active() && Posix.write_all(Control.CHAN.fd, p.buf, p.len; timeout_ms=2_000)
    p.len = 0
    p.count = 0
    length(p.buf) > 64 * 1024 && (p.buf = Vector{UInt8}(undef, 16 * 1024))
    return nothing
end

end # module Access
