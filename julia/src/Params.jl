"""
    Params

CGI variable fix-ups: what the common front ends send, made into what a CGI
page (and `Pages`) expects. Applied once per request, right after the params
are parsed and before the page is looked up, so every front end's documented
set-up reaches the right page with the same variables. PHP-FPM does the same
in `fpm_main.c` (`init_request_info`); the rules here are the ones it applies
for Apache and its `cgi.fix_pathinfo=1`:

1. `SCRIPT_FILENAME=proxy:fcgi://HOST[:PORT]/path` (Apache `mod_proxy_fcgi`,
   `SetHandler "proxy:…|fcgi://…"` or `ProxyPassMatch`) and
   `proxy:balancer://NAME/path` become `/path`; a `?query` Apache appends
   there (`RewriteRule … [P]`) is cut off (the query is in `QUERY_STRING`).
   The same prefix is removed from `PATH_TRANSLATED`.
2. A `SCRIPT_FILENAME` with a trailing path after the page
   (`/www/page.jl/extra/path`: Apache `ProxyPassMatch`, HAProxy `fcgi-app`
   without `path-info`) is split at the first — leftmost — prefix that ends
   in an allowed page extension, directly followed by `/`, and is a regular
   file: `SCRIPT_FILENAME=/www/page.jl`, `PATH_INFO=/extra/path`,
   `SCRIPT_NAME` loses the same trailing path, `PATH_TRANSLATED` becomes
   `DOCUMENT_ROOT` + `PATH_INFO`. A path with a `.` or `..` component or a
   NUL byte is never split (it stays what it was and `Pages` refuses it), and
   the page found is checked by `Pages` like any other (extension, regular
   file, `document_roots`). Only paths that have an extension followed by
   `/` pay for it (a `stat` per candidate); the usual request costs a byte
   scan.
3. A missing `QUERY_STRING` becomes `""` (HAProxy leaves an empty one out;
   CGI says it is always there).
"""
module Params

using ..Config: Settings

const SCRIPT_FILENAME = "SCRIPT_FILENAME"
const PATH_INFO       = "PATH_INFO"
const PATH_TRANSLATED = "PATH_TRANSLATED"
const SCRIPT_NAME     = "SCRIPT_NAME"
const DOCUMENT_ROOT   = "DOCUMENT_ROOT"
const QUERY_STRING    = "QUERY_STRING"

"""What Apache's `mod_proxy_fcgi` puts in front of a script path."""
const PROXY_PREFIXES = ("proxy:fcgi://", "proxy:balancer://")

const SLASH = UInt8('/')
const DOT   = UInt8('.')

"""
    fixup!(env, settings) -> env

Apply the fix-ups of the module docs to one request's parsed params, in
place. Never throws; costs no system call unless a path needs splitting.
"""
function fixup!(env::Dict{String,String}, s::Settings)
    haskey(env, QUERY_STRING) || (env[QUERY_STRING] = "")
    path = get(env, SCRIPT_FILENAME, "")
    isempty(path) && return env
    if startswith(path, "proxy:")
        path = strip_proxy(path; query=true)
        env[SCRIPT_FILENAME] = path
        pt = get(env, PATH_TRANSLATED, "")
        startswith(pt, "proxy:") && (env[PATH_TRANSLATED] = strip_proxy(pt))
    end
    split_path_info!(env, path, s.extensions)
    return env
end

"""
    strip_proxy(path; query=false) -> path

`proxy:fcgi://HOST[:PORT]/p` or `proxy:balancer://NAME/p` → `/p` (with
`query`, also without a `?…` suffix). Anything else is returned unchanged,
as is a prefix with no path after the authority (nothing to serve there).
"""
function strip_proxy(path::String; query::Bool=false)::String
    for prefix in PROXY_PREFIXES
        startswith(path, prefix) || continue
        slash = findnext(isequal('/'), path, sizeof(prefix) + 1)
        slash === nothing && return path
        p = path[slash:end]
        if query
            q = findfirst(isequal('?'), p)
            q === nothing || (p = p[1:prevind(p, q)])
        end
        return p
    end
    return path
end

"""
    split_path_info!(env, path, extensions) -> Bool

Rule 2 of the module docs: split `path` (the request's `SCRIPT_FILENAME`)
into the page and a trailing `PATH_INFO`, walking from the left. Returns
whether it split.
"""
function split_path_info!(env::Dict{String,String}, path::String,
                          extensions::Vector{String})::Bool
    cut = page_prefix_end(path, extensions)
    cut == 0 && return false
    page = path[1:cut]
    rest = path[cut+1:end]
    env[SCRIPT_FILENAME] = page
    env[PATH_INFO] = rest
    name = get(env, SCRIPT_NAME, "")
    if sizeof(name) > sizeof(rest) && endswith(name, rest)
        env[SCRIPT_NAME] = name[1:sizeof(name)-sizeof(rest)]
    end
    root = rstrip(get(env, DOCUMENT_ROOT, ""), '/')
    isempty(root) || (env[PATH_TRANSLATED] = root * rest)
    return true
end

"""
    page_prefix_end(path, extensions) -> n

The byte length of the shortest prefix of `path` that ends in one of
`extensions`, is directly followed by `/`, and is a regular file; 0 when
there is none, or when `path` must not be split at all (a `.`/`..`
component or a NUL byte).
"""
function page_prefix_end(path::String, extensions::Vector{String})::Int
    has_candidate(path, extensions) || return 0
    unsplittable(path) && return 0
    n = sizeof(path)
    for i in 2:n
        codeunit(path, i) == SLASH || continue
        ends_with_extension(path, i - 1, extensions) || continue
        is_regular_file(path[1:i-1]) && return i - 1
    end
    return 0
end

"""Is there any allowed extension directly followed by `/`? (The cheap
test every request takes: no allocation, no system call.)"""
function has_candidate(path::String, extensions::Vector{String})::Bool
    n = sizeof(path)
    for i in 2:n
        codeunit(path, i) == SLASH && ends_with_extension(path, i - 1, extensions) &&
            return true
    end
    return false
end

"""Does `path[1:last]` end in one of `extensions` (compared bytewise), with
something in front of it (`/.jl` is a hidden file, not a page name)?"""
function ends_with_extension(path::String, last::Int, extensions::Vector{String})::Bool
    for ext in extensions
        m = sizeof(ext)
        (m == 0 || last <= m) && continue
        codeunit(path, last - m) == SLASH && continue
        same = true
        for j in 1:m
            if codeunit(path, last - m + j) != codeunit(ext, j)
                same = false
                break
            end
        end
        same && return true
    end
    return false
end

"""A NUL byte, or a `.` or `..` path component: such a path is taken as it
is or refused, never reinterpreted."""
function unsplittable(path::String)::Bool
    n = sizeof(path)
    start = 1                         # first byte of the current component
    for i in 1:n+1
        b = i <= n ? codeunit(path, i) : SLASH
        b == 0x00 && return true
        b == SLASH || continue
        len = i - start
        if (len == 1 && codeunit(path, start) == DOT) ||
           (len == 2 && codeunit(path, start) == DOT && codeunit(path, start + 1) == DOT)
            return true
        end
        start = i + 1
    end
    return false
end

function is_regular_file(p::String)::Bool
    try
        return isfile(stat(p))
    catch
        # EACCES, ELOOP, ENAMETOOLONG on the way: not a page we can serve.
        return false
    end
end

end # module Params
