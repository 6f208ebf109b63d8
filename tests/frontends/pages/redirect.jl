# A bare Location: the worker answers it as 302 Found, as CGI says.
print("Location: http://example.com/elsewhere\r\n\r\n")
