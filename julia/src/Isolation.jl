"""
    Isolation

What one request must not leave to the next, besides `ENV` (`Env`) and its
streams (`Stdio`):

* **Tasks.** A task the page started (`@async`, `schedule`) and that is
  still waiting to run when the request ends would run during a later
  request — with that request's `ENV` and `stdout`. Tasks are recognised by
  the log state they inherit from the worker's task while a page runs (a
  marker, the same for every request: the tasks of earlier requests are
  gone from the queue by then), and are taken off the scheduler's queue:
  they never run.
* **Background work.** A task that is waiting on a timer, a process or a
  socket it reads (`sleep`, `Timer`, `run(…; wait=false)`) cannot be taken
  back from libuv. When a request leaves more libuv handles running than
  it found, the worker is retired after the response (the master starts a
  fresh one), and the log says why.
* **Globals of `Base` that a page may change**: `LOAD_PATH`, `DEPOT_PATH`,
  `ARGS` and the active project come back as they were.

Globals of a handler page's own module (and of packages) persist across
requests on purpose: that is what handler pages are for.
"""
module Isolation

"""What the worker's `Base` globals were before any request."""
struct Baseline
    load_path::Vector{String}
    depot_path::Vector{String}
    args::Vector{String}
    project::Union{Nothing,String}
end

"""Take the baseline (once, after start-up and preloading)."""
baseline() = Baseline(copy(LOAD_PATH), copy(DEPOT_PATH), copy(ARGS), Base.ACTIVE_PROJECT[])

"""
    restore_globals!(b) -> Bool

Put `LOAD_PATH`, `DEPOT_PATH`, `ARGS` and the active project back; `true`
when the page had changed one. Cheap when nothing changed (a few string
comparisons).
"""
function restore_globals!(b::Baseline)::Bool
    changed = false
    LOAD_PATH == b.load_path || (copy!(LOAD_PATH, b.load_path); changed = true)
    DEPOT_PATH == b.depot_path || (copy!(DEPOT_PATH, b.depot_path); changed = true)
    ARGS == b.args || (copy!(ARGS, b.args); changed = true)
    Base.ACTIVE_PROJECT[] == b.project || (Base.ACTIVE_PROJECT[] = b.project; changed = true)
    return changed
end

"""What was running and loaded when a request began."""
struct Mark
    previous::Any       # the worker task's own log state
    handles::UInt32     # active libuv handles
    modules::Int        # length(Base.loaded_modules)
end

# The marker tasks inherit (Task creation copies the creator's `logstate`).
# Made at run time: a LogState holds the logger of the running process.
const MARKER = Ref{Any}(nothing)

function marker()
    m = MARKER[]
    m === nothing || return m
    return MARKER[] = Base.CoreLogging.LogState(Base.CoreLogging.current_logger())
end

# uv_loop_t begins with `void *data; unsigned int active_handles;` (libuv's
# public layout, the same in every 1.x): the count needs no call.
active_handles()::UInt32 = unsafe_load(Ptr{Cuint}(Base.eventloop() + sizeof(Ptr{Cvoid})))

"""
    enter() -> Mark

From here on, tasks the page starts carry this request's marker.
"""
function enter()::Mark
    t = current_task()
    mark = Mark(t.logstate, active_handles(), length(Base.loaded_modules))
    t.logstate = marker()
    return mark
end

# Where runnable tasks of this thread wait (Julia 1.9 added an accessor; the
# vector may grow lazily there).
const WORKQUEUE_FOR = isdefined(Base, :workqueue_for)
workqueue() = WORKQUEUE_FOR ? Base.workqueue_for(Threads.threadid()) :
                              Base.Workqueues[Threads.threadid()]

"""
    leave(mark) -> (parked, handles_left)

The request is over: its tasks still waiting to run are taken off the
queue (`parked`, how many), and `handles_left` is how many more libuv
handles are running than when it began.
"""
function leave(mark::Mark)
    current_task().logstate = mark.previous
    parked = 0
    W = workqueue()
    # Tasks of the worker's own may wait there for good (Distributed's
    # __init__ leaves one, and a worker under load never yields): they are
    # looked at, not taken off and put back, unless a page's task is there.
    m = marker()
    if !isempty(W) && has_queued(W, m)
        keep = Task[]
        while !isempty(W)
            t = popfirst!(W)
            if t.logstate === m
                parked += 1
            else
                push!(keep, t)
            end
        end
        foreach(t -> push!(W, t), keep)
    end
    now = active_handles()
    return (parked, now > mark.handles ? Int(now - mark.handles) : 0)
end

"""Is a task with log state `m` waiting in the work queue `W`? (Walked under
its lock; nothing is taken off.)"""
function has_queued(W, m)::Bool
    found = false
    lock(W.lock)
    t = W.queue.head
    while t !== nothing
        if (t::Task).logstate === m
            found = true
            break
        end
        t = t.next
    end
    unlock(W.lock)
    return found
end

end # module Isolation
