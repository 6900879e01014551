import { useEffect, useState } from 'react';
import { Chat } from './pages/Chat';
import { Replay } from './pages/Replay';
import { Dashboard } from './pages/Dashboard';
import { Review } from './pages/Review';
import { AdminGate } from './pages/AdminGate';
import { OperatorGate } from './pages/OperatorGate';
import { Inbox } from './pages/Inbox';
import { Conversation } from './pages/Conversation';
import { Operators } from './pages/Operators';
import { follow, navigate, route } from './router';

/** The operator console's pages (the customer chat links to none of them). */
const CONSOLE_PAGES = [
  { path: '/console', label: 'Inbox', pages: ['inbox', 'conversation'] },
  { path: '/console/replay', label: 'Replay', pages: ['replay'] },
  { path: '/console/dashboard', label: 'Dashboard', pages: ['dashboard'] },
  { path: '/console/review', label: 'Review', pages: ['review'] },
  { path: '/console/operators', label: 'Operators', pages: ['operators'] },
];

export function App() {
  const [path, setPath] = useState(() => location.pathname);
  useEffect(() => {
    const onPop = () => setPath(location.pathname);
    window.addEventListener('popstate', onPop);
    return () => window.removeEventListener('popstate', onPop);
  }, []);
  const current = route(path);
  useEffect(() => {
    if (current.page === 'moved') navigate(current.to, true);
  }, [path]); // eslint-disable-line react-hooks/exhaustive-deps

  switch (current.page) {
    case 'embed':
      return (
        <main id="main" className="embed">
          <Chat embedded />
        </main>
      );
    case 'chat':
    case 'moved':
      return (
        <>
          <a href="#main" className="skip">
            Skip to content
          </a>
          <header>
            <span className="brand">Support</span>
          </header>
          <main id="main">{current.page === 'chat' && <Chat />}</main>
        </>
      );
  }

  let page;
  switch (current.page) {
    case 'inbox':
      page = (
        <OperatorGate>
          <Inbox />
        </OperatorGate>
      );
      break;
    case 'conversation':
      page = (
        <OperatorGate>
          <Conversation id={current.id} />
        </OperatorGate>
      );
      break;
    case 'replay':
      page = <AdminGate><Replay /></AdminGate>;
      break;
    case 'dashboard':
      page = <AdminGate><Dashboard /></AdminGate>;
      break;
    case 'review':
      page = <AdminGate><Review /></AdminGate>;
      break;
    case 'operators':
      page = <AdminGate><Operators /></AdminGate>;
      break;
  }
  return (
    <>
      <a href="#main" className="skip">
        Skip to content
      </a>
      <header>
        <nav aria-label="Console pages">
          <span className="brand">Console</span>
          {CONSOLE_PAGES.map((p) => (
            <a key={p.path} href={p.path} onClick={(e) => follow(e, p.path)} aria-current={p.pages.includes(current.page) ? 'page' : undefined}>
              {p.label}
            </a>
          ))}
        </nav>
      </header>
      <main id="main">{page}</main>
    </>
  );
}
