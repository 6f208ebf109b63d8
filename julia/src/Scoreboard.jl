"""
    Scoreboard

This worker's slot in the master's scoreboard (INTERFACE.md, "Scoreboard"):
a shared file mapped once, written around each request with plain stores —
no system call — so the master can see which worker is busy with what, and
for how long, without being in the data path.

A request is `busy` from the moment the worker reads it: from its
connection's accept (a kept connection's next request: from its first
byte), so a worker stuck reading a slow request is as visible to
`request_terminate_timeout`, the slow log, the status page and the dynamic
pool as one running a slow page. Method and URI follow once the params are
complete. Between requests it also says how many connections it holds
parked (accepted, their request head still to come: see `Server`), which
are in no listen queue and on no busy worker.

Each write is a seqlock: `seq` odd, fence, the fields, fence, `seq` even.
Without `JULIA_FCGI_SCOREBOARD_FD` (standalone, tests) every call is a no-op.
"""
module Scoreboard

using ..Posix
using ..Log

const MAGIC = b"JFCGISB1"
const LAYOUT_VERSION = UInt32(2)
const HEADER_SIZE = 64
const SLOT_SIZE = 512

# Slot field offsets.
const SEQ              = 0
const PID              = 8
const STATE            = 12
const REQUESTS         = 16
const STARTED_NS       = 24
const LAST_DURATION_NS = 32
const LAST_FINISHED_NS = 40
const METHOD_LEN       = 48
const METHOD           = 49
const METHOD_MAX       = 15
const PARKED           = 64
const URI_LEN          = 68
const URI              = 70
const URI_MAX          = SLOT_SIZE - URI

# States.
const FREE     = UInt32(0)
const STARTING = UInt32(1)
const IDLE     = UInt32(2)
const BUSY     = UInt32(3)
const STOPPING = UInt32(4)

const PROT_READ_WRITE = Cint(3)
const MAP_SHARED = Cint(1)
const SEEK_END = Cint(2)

mutable struct Slot
    base::Ptr{UInt8}      # the whole mapping (C_NULL: no scoreboard)
    len::Int
    slot::Ptr{UInt8}      # this worker's slot
    requests::UInt64
    started::UInt64
    busy::Bool            # the slot says busy (so `done!` has something to end)
    parked::UInt32        # the parked count the slot says
end

const SLOT = Slot(C_NULL, 0, C_NULL, 0, 0, false, 0)

enabled() = SLOT.slot != C_NULL

"""
    init!(env=ENV)

Map the scoreboard the master passed (`JULIA_FCGI_SCOREBOARD_FD`,
`JULIA_FCGI_SCOREBOARD_SLOT`), close the fd (the mapping stays; pages'
processes must not inherit it), and mark the slot `starting` with our pid.
A missing or malformed scoreboard is logged and ignored: it is the master's
view of the worker, never a reason not to serve.
"""
function init!(env=ENV)
    fds, slots = get(env, "JULIA_FCGI_SCOREBOARD_FD", ""), get(env, "JULIA_FCGI_SCOREBOARD_SLOT", "")
    (isempty(fds) || isempty(slots)) && return nothing
    fd, slot = tryparse(Int, fds), tryparse(Int, slots)
    if fd === nothing || slot === nothing || fd < 0 || slot < 0
        Log.warn("ignoring invalid scoreboard settings fd=$(repr(fds)) slot=$(repr(slots))")
        return nothing
    end
    why = map_file!(Cint(fd), slot)
    Posix.closefd(Cint(fd))
    isempty(why) || (Log.warn("scoreboard not used: $why"); return nothing)
    write_state!(STARTING)
    return nothing
end

function map_file!(fd::Cint, slot::Int)::String
    size = ccall(:lseek, Int64, (Cint, Int64, Cint), fd, 0, SEEK_END)
    size < HEADER_SIZE + SLOT_SIZE * (slot + 1) && return "file too small for slot $slot"
    p = ccall(:mmap, Ptr{UInt8}, (Ptr{Cvoid}, Csize_t, Cint, Cint, Cint, Int64),
              C_NULL, size, PROT_READ_WRITE, MAP_SHARED, fd, 0)
    p == Ptr{UInt8}(-1) && return "mmap: " * Posix.strerror(Posix.errno())
    header = unsafe_wrap(Array, p, HEADER_SIZE)
    count = load32(p, 16)
    why = header[1:8] != MAGIC ? "bad magic" :
          load32(p, 8) != LAYOUT_VERSION ? "layout version $(load32(p, 8))" :
          load32(p, 12) != SLOT_SIZE ? "slot size $(load32(p, 12))" :
          slot >= count ? "slot $slot of $count" : ""
    if !isempty(why)
        ccall(:munmap, Cint, (Ptr{UInt8}, Csize_t), p, size)
        return why
    end
    SLOT.base, SLOT.len = p, Int(size)
    SLOT.slot = p + HEADER_SIZE + SLOT_SIZE * slot
    SLOT.requests = UInt64(0)
    SLOT.parked = UInt32(0)
    return ""
end

load32(p::Ptr{UInt8}, off::Int) = ltoh(unsafe_load(Ptr{UInt32}(p + off)))
store32!(p::Ptr{UInt8}, off::Int, v::UInt32) = unsafe_store!(Ptr{UInt32}(p + off), htol(v))
store64!(p::Ptr{UInt8}, off::Int, v::UInt64) = unsafe_store!(Ptr{UInt64}(p + off), htol(v))

# The seqlock around every write.
@inline function begin_write(p::Ptr{UInt8})::UInt64
    seq = ltoh(unsafe_load(Ptr{UInt64}(p + SEQ)))
    seq = iseven(seq) ? seq : seq + 1          # never leave it odd
    store64!(p, SEQ, seq + 1)
    Threads.atomic_fence()
    return seq
end

@inline function end_write(p::Ptr{UInt8}, seq::UInt64)
    Threads.atomic_fence()
    store64!(p, SEQ, seq + 2)
    return nothing
end

"""Set the state (and pid); `starting`, `idle` once warm, `stopping`."""
function write_state!(state::UInt32)
    enabled() || return nothing
    p = SLOT.slot
    seq = begin_write(p)
    store32!(p, PID, UInt32(getpid()))
    store32!(p, STATE, state)
    end_write(p, seq)
    return nothing
end

"""
    reading!(started)

The worker waits for more of a request that began at `started` (`time_ns()`
of the accept, or of a kept connection's next request's first byte):
`busy`, with no method or URI yet. Nothing when the slot says busy already.
"""
function reading!(started::UInt64)
    (enabled() && !SLOT.busy) || return nothing
    p = SLOT.slot
    SLOT.busy = true
    SLOT.started = started
    seq = begin_write(p)
    store32!(p, STATE, BUSY)
    store64!(p, STARTED_NS, started)
    unsafe_store!(p + METHOD_LEN, 0x00)
    unsafe_store!(Ptr{UInt16}(p + URI_LEN), htol(0x0000))
    end_write(p, seq)
    return nothing
end

"""A request's params are complete: `busy` since `started` (see
[`reading!`](@ref)), with its method and URI."""
function busy!(started::UInt64, method::String, uri::String)
    enabled() || return nothing
    p = SLOT.slot
    SLOT.busy = true
    SLOT.started = started
    seq = begin_write(p)
    store32!(p, STATE, BUSY)
    store64!(p, STARTED_NS, started)
    put_text!(p, METHOD_LEN, METHOD, METHOD_MAX, method, 1)
    put_text!(p, URI_LEN, URI, URI_MAX, uri, 2)
    end_write(p, seq)
    return nothing
end

"""The request is over: `idle`, `requests + 1` when it was answered.
Nothing when the slot does not say busy."""
function done!(answered::Bool)
    (enabled() && SLOT.busy) || return nothing
    p = SLOT.slot
    now = time_ns()
    SLOT.busy = false
    answered && (SLOT.requests += 1)
    seq = begin_write(p)
    store32!(p, STATE, IDLE)
    store64!(p, REQUESTS, SLOT.requests)
    store64!(p, LAST_DURATION_NS, now - SLOT.started)
    store64!(p, LAST_FINISHED_NS, now)
    end_write(p, seq)
    return nothing
end

"""
    parked!(n)

The worker holds `n` parked connections. Written only when the number
changes (a connection parked, served, closed at its deadline or by its
peer), so the master's status page and metrics count the clients that
wait on this worker without being in the kernel's listen queue.
"""
function parked!(n::Int)
    enabled() || return nothing
    v = n <= 0 ? UInt32(0) : UInt32(min(n, Int(typemax(UInt32))))
    v == SLOT.parked && return nothing
    SLOT.parked = v
    p = SLOT.slot
    seq = begin_write(p)
    store32!(p, PARKED, v)
    end_write(p, seq)
    return nothing
end

# A length (1 or 2 bytes) and the first `max` bytes of `s`.
function put_text!(p::Ptr{UInt8}, len_off::Int, off::Int, max::Int, s::String, lenbytes::Int)
    n = min(sizeof(s), max)
    if lenbytes == 1
        unsafe_store!(p + len_off, n % UInt8)
    else
        unsafe_store!(Ptr{UInt16}(p + len_off), htol(n % UInt16))
    end
    GC.@preserve s unsafe_copyto!(p + off, pointer(s), n)
    return nothing
end

end # module Scoreboard
