// Runs request cases with Java 17's java.net.http.HttpClient and prints one JSON result a line.
//
// usage: java Client CASES.tsv
//
// The JDK has no JSON parser, so the cases come one a line, tab-separated:
// id, method, url, version (1.1 or 2), expect (0 or 1), body file (or -), chunk sizes
// (comma-separated, or - for a body of known length), read (full, sse, hangup), hangup_after,
// headers (base64 of "Name: value" lines). One HttpClient runs every case in order, so
// connections are reused as a Java service's single client reuses them.
import java.io.InputStream;
import java.io.ByteArrayInputStream;
import java.io.SequenceInputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collections;
import java.util.List;
import java.util.Map;

public class Client {
    public static void main(String[] args) throws Exception {
        HttpClient h1 = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1)
                .followRedirects(HttpClient.Redirect.NEVER).connectTimeout(Duration.ofSeconds(10)).build();
        HttpClient h2 = HttpClient.newBuilder().version(HttpClient.Version.HTTP_2)
                .followRedirects(HttpClient.Redirect.NEVER).connectTimeout(Duration.ofSeconds(10)).build();
        java.util.concurrent.ExecutorService pool = java.util.concurrent.Executors.newCachedThreadPool(r -> {
            Thread t = new Thread(r);
            t.setDaemon(true);
            return t;
        });
        for (String line : Files.readAllLines(Path.of(args[0]), StandardCharsets.UTF_8)) {
            if (line.isEmpty()) continue;
            String[] f = line.split("\t", -1);
            String id = f[0];
            String out;
            long start = System.nanoTime();
            HttpClient client = f[3].equals("2") ? h2 : h1;
            // A case that hangs (reading a body included) is abandoned after 6 s.
            java.util.concurrent.Future<String> fut = pool.submit(() -> run(client, f));
            try {
                out = fut.get(6, java.util.concurrent.TimeUnit.SECONDS);
            } catch (java.util.concurrent.TimeoutException e) {
                fut.cancel(true);
                out = "{\"id\":" + q(id) + ",\"status\":0,\"headers\":[],\"body_b64\":\"\",\"error\":\"hung: no answer in 6 s\"}";
            } catch (java.util.concurrent.ExecutionException ee) {
                Throwable e = ee.getCause();
                out = "{\"id\":" + q(id) + ",\"status\":0,\"headers\":[],\"body_b64\":\"\",\"error\":" + q(e.toString()) + "}";
            }
            out = out.substring(0, out.length() - 1) + ",\"ms\":" + (System.nanoTime() - start) / 1e6 + "}";
            System.out.println(out);
            System.out.flush();
        }
        System.exit(0); // the clients' selector threads would keep the JVM alive
    }

    static String run(HttpClient client, String[] f) throws Exception {
        String id = f[0], method = f[1], url = f[2], bodyFile = f[5], chunks = f[6], read = f[7];
        boolean expect = f[4].equals("1");
        int hangupAfter = Integer.parseInt(f[8]);
        HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(url)).timeout(Duration.ofSeconds(5)).expectContinue(expect);
        for (String h : new String(Base64.getDecoder().decode(f[9]), StandardCharsets.UTF_8).split("\n")) {
            int i = h.indexOf(": ");
            if (i > 0) b.header(h.substring(0, i), h.substring(i + 2));
        }
        HttpRequest.BodyPublisher pub = HttpRequest.BodyPublishers.noBody();
        if (!bodyFile.equals("-")) {
            byte[] body = Files.readAllBytes(Path.of(bodyFile));
            if (chunks.equals("-")) {
                pub = HttpRequest.BodyPublishers.ofByteArray(body);
            } else {
                // Unknown length: sent chunked over HTTP/1.1.
                List<InputStream> parts = new ArrayList<>();
                int pos = 0;
                for (String n : chunks.split(",")) {
                    int len = Integer.parseInt(n);
                    parts.add(new ByteArrayInputStream(body, pos, len));
                    pos += len;
                }
                if (pos < body.length) parts.add(new ByteArrayInputStream(body, pos, body.length - pos));
                pub = HttpRequest.BodyPublishers.ofInputStream(() -> new SequenceInputStream(Collections.enumeration(parts)));
            }
        }
        b.method(method, pub);
        HttpResponse<InputStream> resp = client.send(b.build(), HttpResponse.BodyHandlers.ofInputStream());
        StringBuilder hs = new StringBuilder("[");
        for (Map.Entry<String, List<String>> e : resp.headers().map().entrySet()) {
            for (String v : e.getValue()) {
                if (hs.length() > 1) hs.append(',');
                hs.append('[').append(q(e.getKey().toLowerCase())).append(',').append(q(v)).append(']');
            }
        }
        hs.append(']');
        byte[] data = new byte[0];
        StringBuilder events = new StringBuilder("[");
        try (InputStream in = resp.body()) {
            if (read.equals("sse")) {
                StringBuilder lineBuf = new StringBuilder();
                List<String> dataLines = new ArrayList<>();
                int c;
                while ((c = in.read()) != -1) {
                    if (c != '\n') {
                        lineBuf.append((char) c);
                        continue;
                    }
                    String l = lineBuf.toString().replace("\r", "");
                    lineBuf.setLength(0);
                    if (l.startsWith("data:")) {
                        dataLines.add(l.substring(5).trim());
                    } else if (l.isEmpty() && !dataLines.isEmpty()) {
                        if (events.length() > 1) events.append(',');
                        events.append("{\"t\":").append(System.currentTimeMillis()).append(",\"data\":").append(q(String.join("\n", dataLines))).append('}');
                        dataLines.clear();
                    }
                }
            } else if (read.equals("hangup")) {
                data = in.readNBytes(hangupAfter);
                // closing the stream before its end gives up the connection
            } else {
                data = in.readAllBytes();
            }
        }
        events.append(']');
        String version = resp.version() == HttpClient.Version.HTTP_2 ? "2" : "1.1";
        return "{\"id\":" + q(id) + ",\"status\":" + resp.statusCode() + ",\"headers\":" + hs + ",\"body_b64\":"
                + q(Base64.getEncoder().encodeToString(data)) + ",\"events\":" + events + ",\"version\":" + q(version) + "}";
    }

    static String q(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }
}
