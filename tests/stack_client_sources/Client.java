/*
 * Fetches one URL with java.net.http.HttpClient (HTTP/2) and prints the response body.
 *
 * Usage: java Client URL [PROXY_HOST:PORT]. Trust comes from the javax.net.ssl.trustStore
 * property; with a proxy the request goes through an HTTP CONNECT tunnel (ProxySelector).
 * Fails unless the answer is 200 over HTTP/2.
 */
import java.net.InetSocketAddress;
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class Client {
    public static void main(String[] args) throws Exception {
        HttpClient.Builder builder = HttpClient.newBuilder()
                .version(HttpClient.Version.HTTP_2)
                .connectTimeout(Duration.ofSeconds(20));
        if (args.length > 1) {
            int colon = args[1].lastIndexOf(':');
            builder.proxy(ProxySelector.of(new InetSocketAddress(
                    args[1].substring(0, colon), Integer.parseInt(args[1].substring(colon + 1)))));
        }
        HttpRequest request = HttpRequest.newBuilder(URI.create(args[0]))
                .timeout(Duration.ofSeconds(20)).build();
        HttpResponse<String> response =
                builder.build().send(request, HttpResponse.BodyHandlers.ofString());
        if (response.statusCode() != 200 || response.version() != HttpClient.Version.HTTP_2) {
            System.err.println(response.version() + " " + response.statusCode() + ": "
                    + response.body());
            System.exit(1);
        }
        System.out.print(response.body());
    }
}
