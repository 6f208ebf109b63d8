# GET and POST form handling, CGI style: the query string comes from ENV,
# an application/x-www-form-urlencoded body from stdin. Every value is
# HTML-escaped before it is printed.
#
# Output (deterministic, one <li> per field, in the order received):
#   <li>query: name = value</li>   from QUERY_STRING
#   <li>body: name = value</li>    from the POST body

"""Decode %XX escapes and `+` (a space in form encoding)."""
function urldecode(s::AbstractString)
    out = IOBuffer()
    bytes = codeunits(s)
    i = 1
    while i <= length(bytes)
        b = bytes[i]
        if b == UInt8('+')
            write(out, UInt8(' '))
        elseif b == UInt8('%') && i + 2 <= length(bytes) &&
               (h = tryparse(UInt8, String(bytes[i+1:i+2]); base=16)) !== nothing
            write(out, h)
            i += 2
        else
            write(out, b)
        end
        i += 1
    end
    return String(take!(out))
end

"""`a=1&b=x+y` → ["a" => "1", "b" => "x y"] (order kept, repeats allowed)."""
function parse_form(s::AbstractString)
    fields = Pair{String,String}[]
    for part in split(s, '&'; keepempty=false)
        k, v = occursin('=', part) ? split(part, '='; limit=2) : (part, "")
        push!(fields, urldecode(k) => urldecode(v))
    end
    return fields
end

function html_escape(s::AbstractString)
    return replace(replace(replace(replace(replace(s, "&" => "&amp;"), "<" => "&lt;"),
                                   ">" => "&gt;"), "\"" => "&quot;"), "'" => "&#39;")
end

query = parse_form(get(ENV, "QUERY_STRING", ""))
ctype = get(ENV, "CONTENT_TYPE", "")
body = get(ENV, "REQUEST_METHOD", "GET") == "POST" &&
       startswith(ctype, "application/x-www-form-urlencoded") ?
       parse_form(read(stdin, String)) : Pair{String,String}[]

println("Content-Type: text/html; charset=utf-8")
println()
println("<!DOCTYPE html>")
println("<html><head><title>Form</title></head><body>")
println("<form method=\"post\"><input name=\"name\"> <input name=\"comment\"> <button>Send</button></form>")
println("<ul>")
for (k, v) in query
    println("<li>query: ", html_escape(k), " = ", html_escape(v), "</li>")
end
for (k, v) in body
    println("<li>body: ", html_escape(k), " = ", html_escape(v), "</li>")
end
println("</ul>")
println("</body></html>")
