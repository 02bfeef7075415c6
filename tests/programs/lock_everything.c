/* A hostile tenant: everything a read-only descriptor allows, on every file and directory
 * under a directory that this user can open. OFD and POSIX read locks over the whole file
 * and past its end, an exclusive flock, and a read lease where the kernel allows one. Prints
 * one line per path (what it could open and take), then "locked", and holds it all until
 * killed. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

static int take(const char *path, const struct stat *st, int kind, struct FTW *ftw) {
  (void)st; (void)ftw;
  if (kind != FTW_F && kind != FTW_D) return 0;
  int fd = open(path, O_RDONLY | O_NONBLOCK);
  if (fd < 0) {
    printf("%s open=denied\n", path);
    return 0;
  }
  struct flock whole = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
  int ofd = fcntl(fd, F_OFD_SETLK, &whole) == 0;
  whole.l_pid = 0;
  int posix = fcntl(fd, F_SETLK, &whole) == 0;
  int exclusive = flock(fd, LOCK_EX | LOCK_NB) == 0;
  int lease = fcntl(fd, F_SETLEASE, F_RDLCK) == 0;
  printf("%s open=yes ofd=%d posix=%d flock=%d lease=%d\n", path, ofd, posix, exclusive, lease);
  return 0; /* the descriptor stays open: the locks live as long as it */
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  /* A lease holder is told to give it up with SIGIO, which would end it: a hostile one
   * ignores that and keeps its leases until the kernel breaks them. */
  signal(SIGIO, SIG_IGN);
  if (nftw(argv[1], take, 64, FTW_PHYS) != 0) {
    perror("nftw");
    return 1;
  }
  printf("locked\n");
  fflush(stdout);
  for (;;) pause();
}
