# What a page behind /pathinfo.jl/extra/path sees.
print("Content-Type: text/plain\r\n\r\n")
for name in ("SCRIPT_FILENAME", "SCRIPT_NAME", "PATH_INFO")
    println(name, "=", get(ENV, name, "(unset)"))
end
