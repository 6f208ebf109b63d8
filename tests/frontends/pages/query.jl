# The raw query string and its `q` decoded (percent-encoded UTF-8).
function unescape(s)
    out = UInt8[]
    i = 1
    while i <= sizeof(s)
        c = codeunit(s, i)
        if c == UInt8('%') && i + 2 <= sizeof(s)
            push!(out, parse(UInt8, s[i+1:i+2]; base=16))
            i += 3
        else
            push!(out, c == UInt8('+') ? UInt8(' ') : c)
            i += 1
        end
    end
    return String(out)
end
qs = ENV["QUERY_STRING"]
q = ""
for pair in split(qs, '&')
    k, v = occursin('=', pair) ? split(pair, '='; limit=2) : (pair, "")
    k == "q" && (global q = unescape(v))
end
print("Content-Type: text/plain; charset=utf-8\r\n\r\n", "QUERY_STRING=", qs, "\nq=", q, "\n")
