"""
    Loader

Turns a page file into something callable per request (a [`Page`](@ref)):
parse once, plan with `Transform`, load into a fresh anonymous module that
has its own `include` (relative to the page), `eval`, and an `exit` that ends
the request instead of the process.

Output a page prints while being loaded (a handler page's top level, a
compiled page's hoisted part) goes to the worker's log, not to a response.
"""
module Loader

# Run at load time or on rare paths: compile fast rather than optimize
# (about a second less CPU before READY).
Base.Experimental.@optlevel 1

using ..Log
using ..Output
using ..Output: ResponseIO
using ..Transform
using ..Transform: Stmt, Plan

"""Thrown by a page's `exit(code)`; ends the request, then the worker."""
struct PageExit <: Exception
    code::Int
end

"""A page that does not parse."""
struct PageSyntaxError <: Exception
    msg::String
end
Base.showerror(io::IO, e::PageSyntaxError) = print(io, "syntax error: ", e.msg)

"""A handler page (its top level defines `handle`) that ended up without one."""
struct NoHandler <: Exception
    path::String
end
Base.showerror(io::IO, e::NoHandler) =
    print(io, "page defines `handle` at top level, but after loading it `handle` is not a function: ", e.path)

"""Set when a page calls `exit`, even if the page then catches PageExit."""
const EXIT_REQUEST = Ref(-1)

function request_exit(code::Integer=0)
    EXIT_REQUEST[] = Int(code)
    throw(PageExit(Int(code)))
end

"""A file's identity for the cache: (device, inode, size, mtime)."""
struct FileId
    device::UInt64
    inode::UInt64
    size::Int64
    mtime::Float64
end

FileId(st::Base.StatStruct) = FileId(st.device, st.inode, st.size, st.mtime)

"""
    Page

A loaded page, valid while the file's [`FileId`](@ref) is unchanged — and
those of the files it included while it was loaded (their code was
evaluated once, so editing one must reload the page). `fn` is `handle`
(kind `:handler`) or `__page_main__` (`:compiled`); `stmts` are
re-evaluated per request (`:fallback`).

A compiled page's first run may be `first`: its main part as a `let` block,
lowered once, that julia interprets (see [`first_run`](@ref)), so that the first request
does not wait for `__page_main__` to be inferred and compiled; the worker
compiles it when it is next idle (`Pages.idle!`), or the next request does.
"""
mutable struct Page
    path::String
    id::FileId
    deps::Vector{Pair{String,FileId}}
    kind::Symbol
    fn::Any
    stmts::Vector{Stmt}
    reason::String
    first::Union{Expr,Nothing}
end

same_file(p::Page, st::Base.StatStruct) = p.id == FileId(st)

"""Has a file the page included at load time changed (one stat each)?"""
function deps_changed(p::Page)::Bool
    for (path, id) in p.deps
        # Cannot stat it any more: reload, and let the load report the error.
        st = try stat(path) catch; return true end
        FileId(st) == id || return true
    end
    return false
end

# Files included while a page loads (nothing outside a load).
const DEPS = Ref{Union{Nothing,Vector{Pair{String,FileId}}}}(nothing)

function note_dependency(path::String)
    deps = DEPS[]
    deps === nothing && return nothing
    # Not there: Base.include is about to fail with the real error.
    st = try stat(path) catch; return nothing end
    push!(deps, path => FileId(st))
    return nothing
end

# ------------------------------------------------------------------ parse

"""
    parse_page(text, path) -> Expr

Parse a whole file (`Base.parse_input_line` on Julia 1.5, `Meta.parseall`
where that is gone), so line numbers and `@__FILE__` refer to `path`.
Throws [`PageSyntaxError`](@ref).
"""
function parse_page(text::String, path::String)
    ex = if isdefined(Base, :parse_input_line)
        Base.parse_input_line(text; filename=path)
    else
        Meta.parseall(text; filename=path)
    end
    err = find_error(ex)
    err === nothing || throw(PageSyntaxError(syntax_message(err, text, path)))
    return ex
end

function find_error(ex)
    ex isa Expr || return nothing
    ex.head in (:error, :incomplete) && return ex
    if ex.head === :toplevel
        for a in ex.args
            a isa Expr && a.head in (:error, :incomplete) && return a
        end
    end
    return nothing
end

function syntax_message(err::Expr, text::String, path::String)::String
    msg = isempty(err.args) ? "invalid syntax" :
          err.args[1] isa String ? err.args[1] : sprint(showerror, err.args[1])
    # JuliaSyntax (Julia 1.10+) gives a multi-line diagnostic with the place;
    # Julia 1.5's messages carry no line: find the statement that fails.
    if occursin(path, msg)
        short = diagnostic_message(msg, path)
        return short === nothing ? msg : short
    end
    line = error_line(text)
    return line > 0 ? "$path:$line: $msg" : "$path: $msg"
end

"""
    diagnostic_message(msg, path) -> Union{String,Nothing}

One line `path:LINE: what` from a JuliaSyntax `ParseError` message
(`# Error @ path:LINE:COL`, the source line, `└── what`), or `nothing` when
`msg` is not one.
"""
function diagnostic_message(msg::AbstractString, path::String)::Union{String,Nothing}
    m = match(r"# Error @ .*?:(\d+):\d+", msg)
    m === nothing && return nothing
    lines = split(msg, '\n')
    i = findlast(l -> occursin("──", l), lines)
    what = i === nothing ? "" : strip(last(split(lines[i], "──")))
    return "$path:$(m[1]): " * (isempty(what) ? "invalid syntax" : what)
end

function error_line(text::String)::Int
    pos = 1
    n = ncodeunits(text)
    while pos <= n
        start = pos
        ex, pos = try
            Meta.parse(text, pos; raise=false)
        catch      # only locating the line; the syntax error itself is reported
            return 0
        end
        if ex isa Expr && ex.head in (:error, :incomplete)
            while start <= n && codeunit(text, start) in (0x20, 0x09, 0x0a, 0x0d)
                start += 1
            end
            return 1 + count(==(0x0a), codeunits(text)[1:min(start, n)-1])
        end
        (ex === nothing || pos <= start) && return 0
    end
    return 0
end

# ------------------------------------------------------------------ module

# `using Base` and `using Core` (which `Module(:Page, true, false)` would leave
# out on Julia 1.10+, and then `Integer`, `nothing` or `throw` are undefined
# in the page). The constructor defines no `eval`/`include` on any version:
# `page_module` adds ours, relative to the page.
new_module() = Module(:Page, true)

"""Resolve an `include` path like `julia` does: relative to the file doing
the including (the page itself — `Pages` makes it the source path during a
request — or an included file)."""
function include_path(p::AbstractString, pagedir::String)::String
    isabspath(p) && return String(p)
    src = Base.source_path(nothing)
    return joinpath(src === nothing ? pagedir : dirname(src), p)
end

function include_file(p::AbstractString, pagedir::String)::String
    path = include_path(p, pagedir)
    note_dependency(path)
    return path
end

"""`eval` of a per-request (fallback) page module."""
struct PageEval <: Function
    m::Module
end
(e::PageEval)(x) = Core.eval(e.m, x)

"""`include` of a per-request (fallback) page module."""
struct PageInclude <: Function
    m::Module
    dir::String
end
(i::PageInclude)(p::AbstractString) = Base.include(i.m, include_file(p, i.dir))
(i::PageInclude)(mapexpr::Function, p::AbstractString) =
    Base.include(mapexpr, i.m, include_file(p, i.dir))

# jl_set_const binds a name without evaluating anything; where it may be gone
# (binding partitions, Julia 1.12+), an evaluated `const` does the same.
function set_const!(m::Module, name::Symbol, value)
    if VERSION < v"1.12.0-"
        ccall(:jl_set_const, Cvoid, (Any, Any, Any), m, name, value)
    else
        Core.eval(m, Expr(:const, Expr(:(=), name, value)))
    end
    return nothing
end

"""
    page_module(path; per_request=false) -> Module

A fresh module for `path` with `eval`, `include` (relative to the including
file) and the `exit` shadow. A module loaded once gets them as ordinary
methods (a page may add methods of its own); one made for every request of a
fallback page gets them as constants, ~10× cheaper than defining methods.
"""
function page_module(path::String; per_request::Bool=false)::Module
    m = new_module()
    dir = dirname(path)
    if per_request
        set_const!(m, :eval, PageEval(m))
        set_const!(m, :include, PageInclude(m, dir))
        set_const!(m, :exit, request_exit)
        return m
    end
    Core.eval(m, quote
        eval(x) = $(Core.eval)($m, x)
        include(p::AbstractString) = $(Base.include)($m, $include_file(p, $dir))
        include(mapexpr::Function, p::AbstractString) =
            $(Base.include)(mapexpr, $m, $include_file(p, $dir))
        exit(code::Integer=0) = $request_exit(code)
    end)
    return m
end

# What REPL.softscope does: a top-level loop may update an existing global,
# like inside a function (`x = 0; for i in 1:3; x += i; end` works).
function softscope(ex)
    ex isa Expr || return ex
    ex.head in (:meta, :import, :using, :export, :public, :module, :error, :incomplete,
                :thunk, :global, :toplevel, :struct, :abstract, :primitive) && return ex
    return Expr(:block, Expr(:softscope, true), ex)
end

"""Evaluate one statement in `m` at its own line."""
eval_stmt(m::Module, s::Stmt) =
    Core.eval(m, Expr(:toplevel, s.line, softscope(copy_ex(s.ex))))

copy_ex(ex) = ex isa Expr ? copy(ex) : ex

"""
    capture(f) -> (value, output::String)

Run `f()` with `stdout` captured (and an empty `stdin`), restoring whatever
streams were current before, even when `f` throws.
"""
function capture(f)
    cap = ResponseIO(-1, 0)
    old_in, old_out, old_err = stdin, stdout, stderr
    Base.__jfcgi_set_stdio!(IOBuffer(UInt8[]), cap, old_err)
    try
        v = f()
        return (v, Output.take_output!(cap))
    finally
        Base.__jfcgi_set_stdio!(old_in, old_out, old_err)
        # Only left over when f threw: still worth seeing next to the error.
        cap.buf.len > 0 && Log.info("output of a page while it was loaded: " *
                                Output.take_output!(cap))
    end
end

# ------------------------------------------------------------------ load

"""
    load(path, st) -> Page

Parse and plan the page and prepare it for its kind. Runs inside a request
(the request's ENV, cwd and streams are in place): a handler page's top
level runs now, once. Throws on syntax errors and when loading fails.
"""
function load(path::String, st::Base.StatStruct)::Page
    text = read(path, String)
    stmts = Transform.statements(parse_page(text, path))
    plan = Transform.plan(stmts)
    page = Page(path, FileId(st), Pair{String,FileId}[], plan.kind, nothing, stmts, plan.reason,
                nothing)
    DEPS[] = page.deps
    try
        if plan.kind === :handler
            load_handler!(page)
        elseif plan.kind === :compiled
            compile!(page, plan)
        end
    finally
        DEPS[] = nothing
    end
    if page.kind === :fallback
        empty!(page.deps)      # its includes run again on every request anyway
        Log.info("page is evaluated per request instead of compiled once: $(page.reason)",
                 "SCRIPT_FILENAME" => path)
    end
    return page
end

function load_handler!(page::Page)
    m = page_module(page.path)
    _, out = capture(() -> foreach(s -> eval_stmt(m, s), page.stmts))
    isempty(out) || Log.info("output of handler page top level: " * out,
                             "SCRIPT_FILENAME" => page.path)
    # In the latest world: on Julia 1.12+ the bindings the page just made are
    # invisible to this task's older world (a `handle = …` global would be).
    h = Base.invokelatest(isdefined, m, :handle) ? Base.invokelatest(getfield, m, :handle) :
        nothing
    (h isa Function || h isa Type) || throw(NoHandler(page.path))
    page.fn = h
    return page
end

"""
    compile!(page, plan)

Evaluate the hoisted part once, check that turning the rest into
`__page_main__` is safe, and compile it. Anything unexpected makes the page a
`:fallback` page instead (which reproduces errors where a fresh `julia`
would raise them).
"""
function compile!(page::Page, plan::Plan)
    m = page_module(page.path)
    reason, main = try
        _, out = capture(() -> foreach(s -> eval_stmt(m, s), plan.hoisted))
        # In the latest world, so that `names`, `isconst` and macros see what
        # the hoisted part defined (Julia 1.12+ hides it from older worlds).
        isempty(out) ? Base.invokelatest(compile_check, m, plan) :
                       ("its hoisted part prints output", Stmt[])
    catch e
        e isa PageExit && rethrow()
        ("its hoisted part raised " * sprint(showerror, e), Stmt[])
    end
    if isempty(reason)
        reason = try
            page.fn = Core.eval(m, Transform.main_function(main))
            page.first = first_run(m, main)
            ""
        catch e
            "__page_main__ does not compile: " * sprint(showerror, e)
        end
    end
    if !isempty(reason)
        page.kind = :fallback
        page.reason = reason
    end
    return page
end

"""
    first_run(m, main) -> Union{Expr,Nothing}

The main part as a top-level `let` block, lowered (the thunk `Core.eval`
runs as it is), when julia would interpret it
rather than compile it (no loop, no `ccall`/`llvmcall`: the rule of
`jl_toplevel_eval_flex`), else `nothing`. Interpreted, its calls dispatch
to code that is already compiled (the image's, the packages'), so a fresh
worker answers a page's first request in a few milliseconds instead of the
tens to hundreds julia spends inferring and compiling `__page_main__`. With
a loop the block would be compiled itself, which only doubles the cost.
"""
function first_run(m::Module, main::Vector{Stmt})::Union{Expr,Nothing}
    ex = Transform.main_let(main)
    lowered = try
        Meta.lower(m, ex)
    catch e
        Log.debug("first run: lowering the main part failed: " * sprint(showerror, e))
        return nothing
    end
    (lowered isa Expr && lowered.head === :thunk) || return nothing
    ci = lowered.args[1]
    ci isa Core.CodeInfo || return nothing
    return interpreted(ci.code) ? lowered : nothing
end

"""Would julia interpret this top-level code (no backward jump, no foreign call)?"""
function interpreted(code::Vector{Any})::Bool
    for (i, st) in enumerate(code)
        st isa Core.GotoNode && st.label <= i && return false
        isdefined(Core, :GotoIfNot) && st isa Core.GotoIfNot && st.dest <= i && return false
        st isa Expr || continue
        st.head === :gotoifnot && st.args[2] isa Int && st.args[2] <= i && return false
        calls_foreign(st) && return false
    end
    return true
end

function calls_foreign(ex::Expr)::Bool
    ex.head === :foreigncall && return true
    ex.head === :call && !isempty(ex.args) && ex.args[1] isa GlobalRef &&
        ex.args[1].name === :llvmcall && return true
    return any(a -> a isa Expr && calls_foreign(a), ex.args)
end

const OWN_NAMES = (:eval, :include, :exit, :Page, Transform.MAIN_NAME)

"""
    compile_check(m, plan) -> (reason, main)

`reason` is "" when the compiled form is safe; `main` is the macro-expanded
main part.

After the hoisted part is in `m`: the main part, macro-expanded, must not
contain top-level-only forms; no hoisted definition may refer to a variable
the main part assigns; the main part must not assign a name the module
already owns; and the hoisted part (e.g. an included file) must not have
created non-constant globals, which would carry state between requests.
"""
function compile_check(m::Module, plan::Plan)::Tuple{String,Vector{Stmt}}
    main = Stmt[]
    for s in plan.main
        ex = try
            macroexpand(m, s.ex)
        catch e
            return ("macro expansion failed: " * sprint(showerror, e), main)
        end
        r = Transform.unsafe_reason(ex, true)
        isempty(r) || return (r, main)
        push!(main, Stmt(s.line, ex))
    end
    return (conflict(m, plan, Transform.assigned(main)), main)
end

function conflict(m::Module, plan::Plan, assigned::Set{Symbol})::String
    for h in plan.hoisted
        ex = h.ex
        ex isa Expr && ex.head in (:using, :import, :export, :public, :module) && continue
        refs = Transform.free_symbols(Transform.is_include_stmt(ex) ?
                                      Expr(:tuple, ex.args[2:end]...) : macroexpand(m, ex))
        for x in refs
            x in assigned && return "a definition at line $(h.line.line) uses page variable `$x`"
        end
    end
    for x in names(m; all=true, imported=true)
        x in OWN_NAMES && continue
        x in assigned && return "it assigns `$x`, which is also a global of the page"
        isconst(m, x) || return "its hoisted part defines the non-constant global `$x`"
    end
    return ""
end

end # module Loader
