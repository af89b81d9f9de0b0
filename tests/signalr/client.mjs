// Drives the stock @microsoft/signalr client for api/tests/hub.rs.
//
// Why a script instead of a Rust client: the point is to prove the hub works with the exact
// client the portals ship. The test talks to this script through pipes:
//   environment  HUB_URL (http://host:port/hubs/notifications), HUB_TOKEN (the JWT),
//                HUB_QUIET (set: no client logs, for connections expected to fail)
//   stdout       one JSON event per line: connected | failed | message | invoked |
//                invoke-failed | closed
//   stdin        one JSON command per line: {"cmd":"invoke","method":…,"args":[…]} |
//                {"cmd":"stop"}; end of input stops the connection too.
// The client's own logs (warnings and errors) go to stderr.
import * as signalR from "@microsoft/signalr";
import readline from "node:readline";

const METHODS = [
  "ReceiveEvent",
  "NotificationMessage",
  "StreamEvent",
  "UserOnline",
  "UserOffline",
  "UpdateUserConnections",
];

const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const text = (error) => (error ? String(error.message ?? error) : null);

const connection = new signalR.HubConnectionBuilder()
  .withUrl(process.env.HUB_URL, {
    accessTokenFactory: () => process.env.HUB_TOKEN,
    transport: signalR.HttpTransportType.WebSockets,
    skipNegotiation: false,
  })
  .configureLogging(process.env.HUB_QUIET ? signalR.LogLevel.None : signalR.LogLevel.Warning)
  .build();

for (const method of METHODS) {
  // A handler that returns a value would be taken as a client result: return nothing.
  connection.on(method, (...args) => {
    emit({ event: "message", method, args });
  });
}
connection.onclose((error) => {
  emit({ event: "closed", error: text(error) });
  process.exit(0);
});

try {
  await connection.start();
  emit({ event: "connected", connectionId: connection.connectionId });
} catch (error) {
  emit({ event: "failed", statusCode: error.statusCode ?? null, message: text(error) });
  process.exit(0);
}

const commands = readline.createInterface({ input: process.stdin });
commands.on("line", async (line) => {
  const command = JSON.parse(line);
  if (command.cmd === "invoke") {
    try {
      const result = await connection.invoke(command.method, ...(command.args ?? []));
      emit({ event: "invoked", method: command.method, result: result ?? null });
    } catch (error) {
      emit({ event: "invoke-failed", method: command.method, message: text(error) });
    }
  } else if (command.cmd === "stop") {
    await connection.stop();
  }
});
commands.on("close", () => connection.stop());
