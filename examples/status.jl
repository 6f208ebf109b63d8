# Setting the HTTP status and extra headers CGI style. `?code=404` (default)
# answers 404; `?to=/hello.jl` redirects with 302.
qs = get(ENV, "QUERY_STRING", "")
params = Dict(split(p, '='; limit=2)[1] => (occursin('=', p) ? split(p, '='; limit=2)[2] : "")
              for p in split(qs, '&'; keepempty=false))
if haskey(params, "to")
    println("Status: 302 Found")
    println("Location: ", params["to"])
    println()
else
    code = get(params, "code", "404")
    println("Status: ", code, code == "404" ? " Not Found" : "")
    println("Content-Type: text/plain")
    println("X-Example: status.jl")
    println()
    println("status ", code)
end
