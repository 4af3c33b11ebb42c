/*
 * serve.h: the `lensd serve` command (serve.c; the daemon's parts are in
 * daemon.h).
 */
#ifndef SRV_SERVE_H
#define SRV_SERVE_H

/* Runs the daemon with argv after the command name (argv[0] is "serve")
 * until SIGINT or SIGTERM. Returns the process exit status: 0 after a clean
 * shutdown, 1 when it could not start (the reason on stderr). */
int srv_serve_main(int argc, char **argv);

#endif
