"""
    Packages

The pool's packages (`preload` in the config, `JULIA_FCGI_PRELOAD` here),
loaded once per worker before it says READY: precompiled first when stale
(into the depot, `JULIA_DEPOT_PATH`, which the service user may write), in
the pool's project (`JULIA_PROJECT`). A page's `using MyLib` then finds
them loaded and costs nothing. A package that cannot be loaded is one error
entry naming it; the worker starts anyway, and pages that use it fail with
the same error, each with its own 500.
"""
module Packages

# Runs once at start-up: compile fast rather than optimize.
Base.Experimental.@optlevel 1

using ..Log
using ..Control

"""
    preload!(names) -> Int

Load each package, in order, as `using Name` would (`Base.require` into
`Main`). Logs progress and tells the master how far it got (`STARTING`).
Returns how many loaded.
"""
function preload!(names::Vector{String})::Int
    loaded = 0
    for (i, name) in enumerate(names)
        what = "loading package $name ($i of $(length(names)))"
        Control.starting(what)
        Log.info(what * "; a stale or new one is precompiled first")
        t0 = time()
        try
            Base.require(Main, Symbol(name))
            loaded += 1
            Log.info("package $name loaded in $(round(time() - t0, digits=2)) s")
        catch e
            Log.error("package $name could not be loaded; pages that use it will fail: " *
                      first_lines(sprint(showerror, e), 20),
                      "PACKAGE" => name)
        end
    end
    return loaded
end

"""At most `n` lines of `text` (a precompile failure quotes the whole
child's output)."""
function first_lines(text::String, n::Int)::String
    lines = split(text, '\n')
    length(lines) <= n && return text
    return join(lines[1:n], '\n') * "\n… ($(length(lines) - n) more lines)"
end

end # module Packages
