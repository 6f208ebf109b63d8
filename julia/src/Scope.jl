# Scope analysis for Transform (included into module Transform).
#
# The compiled form turns the page's top-level variables into locals of
# __page_main__. That is only right when no hoisted definition reads or
# writes one of them as a global. So we need, for the hoisted part, the
# symbols it refers to as globals ("free" symbols), and for the main part the
# names it assigns. Both are approximated in the safe direction: a free-symbol
# set that is too large, or an assigned set that is too large, only causes a
# needless fallback, never a wrong page.

const OP_ASSIGN = (:+=, :-=, :*=, :/=, ://=, :\=, :^=, :%=, :÷=, :|=, :&=, :⊻=,
                   :<<=, :>>=, :>>>=, :$=)
const SCOPE_HEADS = (:for, :while, :let, :try, :->, :function, :macro, :do,
                     :comprehension, :typed_comprehension, :generator, :struct,
                     :module, :quote, :abstract, :primitive)
const SKIP_HEADS = (:module, :using, :import, :export, :meta, :line, :inbounds,
                    :boundscheck, :loopinfo, :inert)

# ----------------------------------------------------------- assignments

"""Names bound by an assignment target (`x`, `(a, b)`, `x::T`, `(; a)`)."""
function lhs_names!(names::Set{Symbol}, lhs)
    if lhs isa Symbol
        push!(names, lhs)
    elseif lhs isa Expr
        if lhs.head in (:tuple, :parameters)
            foreach(a -> lhs_names!(names, a), lhs.args)
        elseif lhs.head in (:(::), :...) && !isempty(lhs.args)
            lhs_names!(names, lhs.args[1])
        end   # a[i] = …, a.b = …: mutation, binds nothing
    end
    return names
end

"""
    assigned_in_scope!(names, ex)

Names that `ex` makes local to the scope it is in: assignment targets,
`local` declarations and named local functions — not descending into nested
scopes (loops, `let`, `try`, functions…), which bind their own.
"""
function assigned_in_scope!(names::Set{Symbol}, ex)
    ex isa Expr || return names
    h = ex.head
    if is_funcdef(ex)
        n = fn_name(ex.args[1]); n isa Symbol && push!(names, n)
    elseif h === :(=) || h in OP_ASSIGN
        lhs_names!(names, ex.args[1])
        assigned_in_scope!(names, ex.args[2])
    elseif h === :local
        for a in ex.args
            a isa Expr && a.head === :(=) ? assigned_in_scope!(names, a) : lhs_names!(names, a)
        end
    elseif h in (:tuple, :parameters, :kw)
        # `(a = 1,)` and `f(a = 1)` name fields/keywords, they assign nothing.
        for a in ex.args
            a isa Expr && a.head in (:(=), :kw) ? assigned_in_scope!(names, a.args[2]) :
                                                  assigned_in_scope!(names, a)
        end
    elseif !(h in SCOPE_HEADS) && h !== :macrocall
        foreach(a -> assigned_in_scope!(names, a), ex.args)
    end
    return names
end

"""
    assigned(stmts) -> Set{Symbol}

Every name the statements assign anywhere, at any depth (an
over-approximation of the variables `__page_main__` would make local).
"""
function assigned(stmts::Vector{Stmt})::Set{Symbol}
    names = Set{Symbol}()
    for s in stmts
        all_assigned!(names, s.ex)
    end
    return names
end

function all_assigned!(names::Set{Symbol}, ex)
    ex isa Expr || return names
    if ex.head === :(=) || ex.head in OP_ASSIGN || ex.head === :local
        lhs_names!(names, ex.args[1])
    elseif ex.head === :for
        spec = ex.args[1]
        for s in (spec isa Expr && spec.head === :block ? spec.args : (spec,))
            s isa Expr && s.head === :(=) && lhs_names!(names, s.args[1])
        end
    end
    foreach(a -> all_assigned!(names, a), ex.args)
    return names
end

# ------------------------------------------------------------ free symbols

"""
    free_symbols(ex) -> Set{Symbol}

Symbols `ex` refers to that no enclosing scope inside `ex` binds: its
references to globals (over-approximated).
"""
free_symbols(ex) = collect_free!(Set{Symbol}(), ex, Set{Symbol}())

function collect_free!(free::Set{Symbol}, ex, bound::Set{Symbol})
    if ex isa Symbol
        ex in bound || ex === :end || ex === :begin || push!(free, ex)
        return free
    end
    ex isa Expr || return free
    h = ex.head
    if is_funcdef(ex) || h === :macro
        length(ex.args) >= 2 && collect_fn!(free, ex.args[1], ex.args[2], bound)
    elseif h === :->
        collect_fn!(free, ex.args[1], ex.args[2], bound)
    elseif h === :function     # anonymous `function (x) … end`
        length(ex.args) >= 2 && collect_fn!(free, ex.args[1], ex.args[2], bound)
    elseif h === :for
        collect_loop!(free, ex.args[1], ex.args[2], bound)
    elseif h === :while
        collect_free!(free, ex.args[1], bound)
        collect_free!(free, ex.args[2], scope(bound, ex.args[2]))
    elseif h === :let
        collect_let!(free, ex, bound)
    elseif h === :try
        collect_try!(free, ex, bound)
    elseif h === :generator
        collect_generator!(free, ex, bound)
    elseif h === :kw
        collect_free!(free, ex.args[2], bound)
    elseif h === :tuple || h === :parameters
        for a in ex.args
            a isa Expr && a.head in (:(=), :kw) ? collect_free!(free, a.args[2], bound) :
                                                  collect_free!(free, a, bound)
        end
    elseif h === :.
        collect_free!(free, ex.args[1], bound)
        length(ex.args) >= 2 && !(ex.args[2] isa QuoteNode) && collect_free!(free, ex.args[2], bound)
    elseif h === :quote
        collect_interpolated!(free, ex, bound)
    elseif h === :struct
        collect_struct!(free, ex, bound)
    elseif h === :macrocall
        foreach(a -> collect_free!(free, a, bound), ex.args[2:end])
    elseif !(h in SKIP_HEADS)
        foreach(a -> collect_free!(free, a, bound), ex.args)
    end
    return free
end

"""`bound` plus what `body` makes local: the bound set inside a new scope."""
scope(bound::Set{Symbol}, body) = assigned_in_scope!(copy(bound), body)

function collect_fn!(free, sig, body, bound)
    names = Set{Symbol}()
    deferred = Any[]          # argument types and defaults: evaluated inside
    sig_names!(names, deferred, sig)
    inner = scope(union(bound, names), body)
    foreach(d -> collect_free!(free, d, inner), deferred)
    collect_free!(free, body, inner)
    return free
end

# Argument names of a signature go to `names`; types, defaults and a
# qualified function name (Base.show → Base) to `deferred`.
function sig_names!(names::Set{Symbol}, deferred::Vector{Any}, sig)
    if sig isa Symbol
        push!(names, sig)                    # x -> …
    elseif sig isa Expr
        h = sig.head
        if h === :where
            for p in sig.args[2:end]
                if p isa Symbol
                    push!(names, p)
                elseif p isa Expr && p.head in (:<:, :>:) && p.args[1] isa Symbol
                    push!(names, p.args[1]); append!(deferred, p.args[2:end])
                else
                    push!(deferred, p)
                end
            end
            sig_names!(names, deferred, sig.args[1])
        elseif h === :call
            f = sig.args[1]
            f isa Symbol || (f isa Expr && f.head === :(::) ? arg_names!(names, deferred, f) :
                                                              push!(deferred, f))
            foreach(a -> arg_names!(names, deferred, a), sig.args[2:end])
        elseif h === :(::) && length(sig.args) == 2 && sig.args[1] isa Expr &&
               sig.args[1].head in (:call, :where)
            push!(deferred, sig.args[2])     # f(x)::T = …
            sig_names!(names, deferred, sig.args[1])
        else                                 # (a, b) -> …, (x; k) -> …
            foreach(a -> arg_names!(names, deferred, a),
                    h in (:tuple, :block) ? sig.args : (sig,))
        end
    end
    return names
end

function arg_names!(names::Set{Symbol}, deferred::Vector{Any}, a)
    if a isa Symbol
        push!(names, a)
    elseif a isa Expr
        h = a.head
        if h === :(::)
            length(a.args) == 2 ? (arg_names!(names, deferred, a.args[1]);
                                   push!(deferred, a.args[2])) :
                                  push!(deferred, a.args[1])
        elseif h === :kw || h === :(=)
            arg_names!(names, deferred, a.args[1]); push!(deferred, a.args[2])
        elseif h in (:..., :parameters, :tuple, :macrocall)
            foreach(x -> arg_names!(names, deferred, x), a.args)
        elseif h !== :line
            push!(deferred, a)
        end
    end
    return names
end

function collect_loop!(free, spec, body, bound)
    specs = spec isa Expr && spec.head === :block ? spec.args : Any[spec]
    vars = Set{Symbol}()
    for s in specs
        if s isa Expr && s.head in (:(=), :in, :∈)
            lhs_names!(vars, s.args[1])
            collect_free!(free, s.args[2], bound)
        else
            collect_free!(free, s, bound)
        end
    end
    collect_free!(free, body, scope(union(bound, vars), body))
    return free
end

function collect_let!(free, ex, bound)
    binds = ex.args[1]
    vars = Set{Symbol}()
    for b in (binds isa Expr && binds.head === :block ? binds.args : Any[binds])
        if b isa Expr && b.head === :(=)
            lhs_names!(vars, b.args[1])
            collect_free!(free, b.args[2], bound)
        elseif b isa Symbol
            push!(vars, b)
        end
    end
    collect_free!(free, ex.args[2], scope(union(bound, vars), ex.args[2]))
    return free
end

# try, catch, else and finally blocks are each their own scope.
function collect_try!(free, ex, bound)
    collect_free!(free, ex.args[1], scope(bound, ex.args[1]))
    if length(ex.args) >= 3 && ex.args[3] isa Expr
        inner = copy(bound)
        ex.args[2] isa Symbol && push!(inner, ex.args[2])
        collect_free!(free, ex.args[3], assigned_in_scope!(inner, ex.args[3]))
    end
    for k in 4:length(ex.args)
        b = ex.args[k]
        b isa Expr && collect_free!(free, b, scope(bound, b))
    end
    return free
end

function collect_generator!(free, ex, bound)
    vars = Set{Symbol}()
    conds = Any[]
    gen_specs!(vars, conds, free, ex.args[2:end], bound)
    inner = union(bound, vars)
    collect_free!(free, ex.args[1], inner)
    foreach(c -> collect_free!(free, c, inner), conds)
    return free
end

function gen_specs!(vars, conds, free, specs, bound)
    for s in specs
        if s isa Expr && s.head === :(=)
            lhs_names!(vars, s.args[1])
            collect_free!(free, s.args[2], bound)
        elseif s isa Expr && s.head === :filter
            push!(conds, s.args[1])
            gen_specs!(vars, conds, free, s.args[2:end], bound)
        else
            collect_free!(free, s, bound)
        end
    end
end

# Only `$(…)` inside quoted code refers to variables.
function collect_interpolated!(free, ex, bound)
    ex isa Expr || return free
    if ex.head === :$
        foreach(a -> collect_free!(free, a, bound), ex.args)
    else
        foreach(a -> collect_interpolated!(free, a, bound), ex.args)
    end
    return free
end

# struct S{T} <: Super; field::Type; field2 = default; S(x) = new(x); end
function collect_struct!(free, ex, bound)
    inner = copy(bound)
    push!(inner, :new)
    head = ex.args[2]
    if head isa Expr && head.head === :<:
        collect_free!(free, head.args[2], type_params!(inner, head.args[1]))
    else
        type_params!(inner, head)
    end
    for f in ex.args[3].args
        if f isa Symbol || f isa LineNumberNode || f isa String
            continue                                   # a field name, a doc
        elseif f isa Expr && f.head === :(::) && f.args[1] isa Symbol
            collect_free!(free, f.args[2], inner)      # field::Type
        elseif f isa Expr && f.head === :(=) && !is_funcdef(f)
            lhs = f.args[1]                            # @kwdef default
            lhs isa Expr && collect_free!(free, lhs.args[2], inner)
            collect_free!(free, f.args[2], inner)
        else
            collect_free!(free, f, inner)
        end
    end
    return free
end

function type_params!(bound::Set{Symbol}, head)
    if head isa Symbol
        push!(bound, head)
    elseif head isa Expr && head.head === :curly
        head.args[1] isa Symbol && push!(bound, head.args[1])
        for p in head.args[2:end]
            p isa Symbol && push!(bound, p)
            p isa Expr && p.head in (:<:, :>:) && p.args[1] isa Symbol && push!(bound, p.args[1])
        end
    end
    return bound
end
