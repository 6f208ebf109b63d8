"""
    Log

The worker's own log entries. With a master (control channel on fd 3) each
entry is one `LOG` line on the control channel; standalone (e.g. under
spawn-fcgi) it is one plain line on stderr. Either way it is written with raw
`write(2)`, so an entry is never stuck in a libuv buffer when the worker dies
right after, and fields are escaped (`\\`, newline, CR, TAB) so a multi-line
backtrace stays one line and one entry (INTERFACE.md, "Control channel").
"""
module Log

# Run at load time or on rare paths: compile fast rather than optimize
# (about a second less CPU before READY).
Base.Experimental.@optlevel 1

using ..Posix

const ERROR = "error"
const WARN  = "warn"
const INFO  = "info"
const DEBUG = "debug"

"""Where entries go. `quiet` drops them (used while warming up, where the
synthetic 404/403/500 requests are expected and not news)."""
mutable struct Sink
    fd::Cint
    control::Bool
    quiet::Bool
end

const SINK = Sink(Cint(2), false, false)

"""
    init!(fd; control)

Send entries to `fd`: the control channel when `control` is true (LOG lines),
else stderr (plain lines).
"""
function init!(fd::Integer; control::Bool)
    SINK.fd = Cint(fd)
    SINK.control = control
    return nothing
end

"""Run `f` with entries dropped; returns what `f` returns."""
function quietly(f)
    old = SINK.quiet
    SINK.quiet = true
    try
        return f()
    finally
        SINK.quiet = old
    end
end

"""
    escape_field(s) -> String

Escape a field as INTERFACE.md says: `\\` → `\\\\`, newline → `\\n`,
carriage return → `\\r`, TAB → `\\t`. Everything else is passed through.
"""
function escape_field(s::AbstractString)::String
    any(c -> c == '\\' || c == '\n' || c == '\r' || c == '\t', s) || return String(s)
    io = IOBuffer()
    for c in s
        if c == '\\'
            write(io, "\\\\")
        elseif c == '\n'
            write(io, "\\n")
        elseif c == '\r'
            write(io, "\\r")
        elseif c == '\t'
            write(io, "\\t")
        else
            write(io, c)
        end
    end
    return String(take!(io))
end

"""
    send_line(line)

Write one complete line (a trailing newline is added) to the sink with one
`write(2)` (retrying short writes). Failures are ignored: if the master is
gone there is nobody left to tell.
"""
function send_line(line::AbstractString)
    bytes = Vector{UInt8}(string(line, '\n'))
    Posix.write_all(SINK.fd, bytes; socket=SINK.control, timeout_ms=2_000)
    return nothing
end

"""
    format_entry(level, msg, fields; control) -> String

One entry as a line (without the newline): `LOG⇥level⇥msg⇥KEY=value…` for
the master, `julia-fcgi[pid] level: msg KEY=value …` for stderr.
"""
function format_entry(level::AbstractString, msg::AbstractString,
                      fields; control::Bool)::String
    io = IOBuffer()
    if control
        print(io, "LOG\t", level, '\t', escape_field(msg))
        for (k, v) in fields
            print(io, '\t', k, '=', escape_field(string(v)))
        end
    else
        print(io, "julia-fcgi[", getpid(), "] ", level, ": ", escape_field(msg))
        for (k, v) in fields
            print(io, ' ', k, '=', escape_field(string(v)))
        end
    end
    return String(take!(io))
end

"""
    entry(level, msg, fields::Pair...)

Write one log entry, e.g. `Log.entry(Log.WARN, "bad record", "FD" => 5)`.
Never throws: logging must not be the thing that kills a worker.
"""
function entry(level::String, msg::AbstractString, fields::Pair...)
    SINK.quiet && return nothing
    try
        send_line(format_entry(level, msg, fields; control=SINK.control))
    catch e
        # Last resort: the formatter itself failed (a broken `string` method
        # of some value); say so without the value.
        try
            send_line(format_entry(ERROR, "log entry could not be formatted: " *
                                   sprint(showerror, e), (); control=SINK.control))
        catch
        end
    end
    return nothing
end

error(msg::AbstractString, fields::Pair...) = entry(ERROR, msg, fields...)
warn(msg::AbstractString, fields::Pair...)  = entry(WARN, msg, fields...)
info(msg::AbstractString, fields::Pair...)  = entry(INFO, msg, fields...)
debug(msg::AbstractString, fields::Pair...) = entry(DEBUG, msg, fields...)

"""The fields of an entry about a request, from its CGI params."""
request_fields(params::AbstractDict{String,String}) =
    ("REQUEST_URI" => get(params, "REQUEST_URI", ""),
     "SCRIPT_FILENAME" => get(params, "SCRIPT_FILENAME", ""),
     "REQUEST_METHOD" => get(params, "REQUEST_METHOD", ""))

end # module Log
