"""The BoringSSL engine: curl-impersonate (inside curl_cffi) builds the upstream ClientHello
from the client's, one libcurl easy handle per connection on a multi handle driven by the
event loop (``multi``); ``handshake`` configures the handles, ``native`` reaches the libcurl
and BoringSSL functions curl_cffi does not wrap, ``fingerprint_options`` sets the hello's
options."""
